"""The layout shows the design: the sans-IO layers import no aiocoap; neither the faces nor the tree's
dispatcher and handlers hold resource id literals."""

from __future__ import annotations

import io
import subprocess
import sys
import tokenize
from pathlib import Path

from tap_emulator.model import default_model

REPO = Path(__file__).resolve().parents[3]
FACES = REPO / "tap_emulator" / "faces"


def test_model_tree_state_and_codecs_import_no_aiocoap() -> None:
    probe = (
        "import sys\n"
        "import tap_emulator.model, tap_emulator.tree, tap_emulator.state, tap_emulator.config\n"
        "import tap_emulator.codec.values, tap_emulator.codec.apdu, tap_emulator.codec.secure_frame\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiocoap'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_the_probe_would_see_aiocoap() -> None:
    """The same probe notices aiocoap when the CoAP face is imported (so the check above is not vacuous)."""
    probe = "import sys, tap_emulator.faces.coap\nprint('aiocoap' in sys.modules)\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "True"


def _literals(source: str) -> list[tuple[int, str]]:
    """(line, literal text) of every number and string token of a module; docstrings (prose) excluded."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING and token.string.lstrip("rbfu").startswith(('"""', "'''")):
            continue
        if token.type in (tokenize.NUMBER, tokenize.STRING):
            found.append((token.start[0], token.string))
    return found


def _model_ids() -> set[int]:
    """Object and resource ids that cannot be mistaken for ordinary small numbers (indexes, counts, a
    period of 10): object 1024's resources 6 to 10 share their numbers with such counts."""
    model = default_model()
    ids = {obj.id for obj in model.objects.values()}
    ids |= {rid for obj in model.objects.values() for rid in obj.resources}
    return {i for i in ids if i > 10}


def _offenders(sources: list[Path], *, numbers: bool) -> list[str]:
    ids = _model_ids()
    segments = {str(i) for i in ids}
    found = []
    for source in sources:
        for line, literal in _literals(source.read_text(encoding="utf-8")):
            is_number = literal.isdigit() and int(literal) in ids
            text = literal.strip("\"'rbf")
            in_path = literal[-1:] in "\"'" and any(
                part in segments for part in text.split("/") if "/" in text
            )
            bare = literal[-1:] in "\"'" and text in segments
            if (numbers and is_number) or in_path or bare:
                found.append(f"{source.name}:{line}: {literal}")
    return found


def test_the_coap_face_holds_no_object_or_resource_id_literals() -> None:
    sources = sorted((FACES / "coap").rglob("*.py"))
    assert sources
    offenders = _offenders(sources, numbers=True)
    assert not offenders, "resource ids belong in the model:\n" + "\n".join(offenders)


def test_the_tree_dispatcher_holds_no_object_or_resource_id_literals() -> None:
    """The dispatcher, its API and the handler contract name objects only through the model and the
    handlers (issue 11 step 1); ids may appear only in a handler's own object file, and not even there."""
    tree = REPO / "tap_emulator" / "tree"
    sources = [tree / "tree.py", tree / "api.py", *sorted((tree / "handlers").rglob("*.py"))]
    offenders = _offenders(sources, numbers=True)
    assert not offenders, "resource ids belong in the model:\n" + "\n".join(offenders)


def test_sync_changes_device_state_only_through_the_tree() -> None:
    """The reconcile re-versions and tombstones through a tree operation, never behind the tree's back
    (a state write plus a reload would let a request interleave with them). The one-device and the
    fleet's sync share that step (sync/device.py); only re-queued rows, which change no instance, are
    written without the tree."""
    behind = ("apply_reconcile_sync", ".reload(", "commit_sync(", "reset_sync(")
    for source in sorted((REPO / "tap_emulator" / "sync").rglob("*.py")):
        text = source.read_text(encoding="utf-8")
        assert not [word for word in behind if word in text], source.name
    assert "tree.apply_reconcile(" in (REPO / "tap_emulator" / "sync" / "device.py").read_text("utf-8")


def test_no_face_spells_an_object_path() -> None:
    """Across every face, strings such as "/1025/" or "1024" are routes the model should provide.

    (Bare numbers are only checked in the CoAP face: the Tap face has sizes like 16 and 1024.)"""
    offenders = _offenders(sorted(FACES.rglob("*.py")), numbers=False)
    assert not offenders, "resource ids belong in the model:\n" + "\n".join(offenders)


def test_the_scan_finds_ids_in_code_but_not_in_prose(tmp_path: Path) -> None:
    sample = tmp_path / "face.py"
    sample.write_text(
        '"""Serves /1025/{g}/0."""\nGROUP = 1025\nROUTE = "/1024//6"\nSIZE = 4\n', encoding="utf-8"
    )
    assert _offenders([sample], numbers=True) == ["face.py:2: 1025", 'face.py:3: "/1024//6"']
    assert _offenders([sample], numbers=False) == ['face.py:3: "/1024//6"']
