"""The GroupService table again, driven by libcoap's ``coap-client-notls`` against a served emulator.

libcoap exits 0 even when a request fails, so every call runs with ``-v 6`` (which prints each PDU as
``v:1 t:ACK c:2.05 ...``) and the test reads the response code from that line, and the payload from the
``-o`` file. One server serves the whole module; tests use distinct groups so they do not interfere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("coap-client-notls") is None, reason="libcoap3-bin is not installed"),
]

REPO = Path(__file__).resolve().parents[3]
CANONICAL = {
    "name": "0",
    "password": "2",
    "password-key": "2",
    "session-lifetime": "4",
    "alias": "5",
    "scram-user-iteration": "7",
    "scram-user-salt": "16",
    "create": "65535",
}
FORMS = ("canonical", "alias")
PDU = re.compile(r"^v:1 t:(CON|NON|ACK|RST) c:(\d\.\d\d) ", re.MULTILINE)


def path(form: str, group: int | str, slug: str) -> str:
    return f"/group/{group}/{slug}" if form == "alias" else f"/1025/{group}/{CANONICAL[slug]}"


@dataclass
class Reply:
    types: list[str]
    codes: list[str]
    payload: bytes
    output: str

    @property
    def code(self) -> str:
        assert self.codes, f"no response seen: {self.output}"
        return self.codes[-1]


@dataclass
class LibcoapClient:
    port: int
    workdir: Path

    def __call__(
        self,
        method: str,
        p: str,
        payload: bytes | None = None,
        *,
        content_format: int | None = None,
        accept: int | None = None,
        observe_seconds: int | None = None,
        block_size: int | None = None,
        timeout: float = 15.0,
    ) -> Reply:
        out = self.workdir / "payload.out"
        out.unlink(missing_ok=True)
        args = ["coap-client-notls", "-v", "6", "-B", "5", "-m", method.lower(), "-o", str(out)]
        if payload is not None:
            body = self.workdir / "payload.in"
            body.write_bytes(payload)
            args += ["-f", str(body)]
        if content_format is not None:
            args += ["-t", str(content_format)]
        if accept is not None:
            args += ["-A", str(accept)]
        if observe_seconds is not None:
            args += ["-s", str(observe_seconds)]
        if block_size is not None:
            args += ["-b", str(block_size)]
        args.append(f"coap://127.0.0.1:{self.port}{p}")
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
        output = done.stdout + done.stderr
        # Request lines carry a method (c:GET), so only responses and notifications match.
        pdus = PDU.findall(output)
        return Reply(
            [t for t, _ in pdus], [c for _, c in pdus], out.read_bytes() if out.exists() else b"", output
        )


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, coap_fast_path: bool) -> Iterator[LibcoapClient]:
    workdir = tmp_path_factory.mktemp("libcoap")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tap_emulator",
            "serve",
            "--coap",
            "127.0.0.1:0",
            "--tcp",
            "off",
            "--ws",
            "off",
            "--http",
            "off",
            "--state",
            str(workdir / "s.db"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening coap udp 127.0.0.1:"), line
        yield LibcoapClient(int(line.rsplit(":", 1)[1]), workdir)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(10) == 0
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)


@pytest.mark.parametrize("form", FORMS)
def test_every_call_of_the_table(client: LibcoapClient, form: str) -> None:
    group = 100 if form == "canonical" else 200
    assert client("GET", path(form, group, "name")).code == "4.04"
    assert client("POST", path(form, group, "create")).code == "2.01"
    again = client("POST", path(form, group, "create"))
    assert again.code == "4.00" and "exists" in again.output
    assert client("PUT", path(form, group, "name"), b"lib-" + form.encode()).code == "2.04"
    name = client("GET", path(form, group, "name"))
    assert (name.code, name.payload) == ("2.05", b"lib-" + form.encode())
    for slug, value in (("session-lifetime", 65535), ("alias", 65534), ("scram-user-salt", 2**32 - 1)):
        assert client("PUT", path(form, group, slug), str(value).encode()).code == "2.04"
        reply = client("GET", path(form, group, slug))
        assert (reply.code, reply.payload) == ("2.05", str(value).encode()), slug
    assert client("PUT", path(form, group, "scram-user-iteration"), b"1").code == "2.04"
    assert client("GET", path(form, group, "scram-user-iteration")).payload == b"1"
    assert (
        client("POST", path(form, group, "password"), b"pw-" + form.encode(), content_format=0).code == "2.04"
    )
    key = bytes(range(32)) + b"\x01\x02\x03\x04" + (9000).to_bytes(4, "big")
    key_format = 42 if form == "canonical" else None
    assert client("POST", path(form, group, "password-key"), key, content_format=key_format).code == "2.04"
    assert client("GET", path(form, group, "scram-user-salt")).payload == str(0x01020304).encode()
    assert client("GET", path(form, group, "scram-user-iteration")).payload == b"9000"


REFUSALS = [
    ("PUT", "name", b"x" * 17, None, "4.00"),
    ("PUT", "name", b"bell\x07", None, "4.00"),
    ("POST", "password", b"p" * 17, 0, "4.00"),
    ("POST", "password-key", bytes(20), 42, "4.00"),
    ("PUT", "alias", b"4242", None, "4.00"),
    ("PUT", "scram-user-iteration", b"0", None, "4.00"),
    ("PUT", "scram-user-iteration", b"4294967296", None, "4.00"),
    ("PUT", "scram-user-salt", b"4294967296", None, "4.00"),
    ("PUT", "session-lifetime", b"65536", None, "4.00"),
    ("GET", "password", None, None, "4.05"),
    ("GET", "password-key", None, None, "4.05"),
    ("PUT", "create", b"", None, "4.05"),
    ("DELETE", "name", None, None, "4.05"),
    ("DELETE", "create", None, None, "4.05"),
    ("PUT", "name", b"{}", 50, "4.15"),
    ("POST", "password", b"{}", 50, "4.15"),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("method", "slug", "payload", "cf", "expected"), REFUSALS)
def test_refusals(
    client: LibcoapClient,
    form: str,
    method: str,
    slug: str,
    payload: bytes | None,
    cf: int | None,
    expected: str,
) -> None:
    if slug == "password-key" and form == "alias":
        cf = None
    assert client(method, path(form, 65534, slug), payload, content_format=cf).code == expected


@pytest.mark.parametrize("form", FORMS)
def test_missing_group_and_unsupported_accept(client: LibcoapClient, form: str) -> None:
    assert client("GET", path(form, 4242, "session-lifetime")).code == "4.04"
    assert client("PUT", path(form, 4242, "name"), b"x").code == "4.04"
    assert client("GET", path(form, 65535, "name"), accept=50).code == "4.06"
    assert client("DELETE", path(form, 65535, "name")).code == "4.05"  # a resource is not deleted
    # The admin group is never deleted (LwM2M Delete of an instance, issue 13).
    assert client("DELETE", "/1025/65535" if form == "canonical" else "/group/65535").code == "4.00"


@pytest.mark.parametrize("form", FORMS)
def test_representations(client: LibcoapClient, form: str) -> None:
    assert client("GET", path(form, 65535, "session-lifetime"), accept=42).payload == b"\x01\x2c"
    assert client("GET", path(form, 65535, "session-lifetime"), accept=60).payload == cbor2.dumps(300)
    assert client("GET", path(form, 65535, "name"), accept=60).payload == cbor2.dumps("admin")
    group = 300 if form == "canonical" else 301
    assert client("POST", path(form, group, "create")).code == "2.01"
    lifetime = path(form, group, "session-lifetime")
    assert client("PUT", lifetime, b"\x00\x07", content_format=42).code == "2.04"
    assert client("GET", lifetime).payload == b"7"
    assert client("PUT", lifetime, cbor2.dumps(8), content_format=60).code == "2.04"
    assert client("GET", lifetime).payload == b"8"


def test_senml_and_discovery(client: LibcoapClient) -> None:
    as_json = client("GET", "/1025/65535")
    assert as_json.code == "2.05"
    records = json.loads(as_json.payload)
    assert records[0]["bn"] == "/1025/65535/"
    assert {r["n"] for r in records} == {"0", "4", "5", "7", "16"}
    as_cbor = cbor2.loads(client("GET", "/1025", accept=112).payload)
    names = {r[0] for r in as_cbor}
    assert {"0/0", "65534/0", "65535/0"} <= names
    assert not any(n.endswith("/2") for n in names)
    links = client("GET", "/.well-known/core").payload.decode()
    assert "</group/65535/password-key>;rt=tap.group.password-key" in links
    assert "</1025/65535/65535>" in links and ";if=core.a" in links and "{" not in links


def test_observe_shows_notifications(client: LibcoapClient, tmp_path: Path) -> None:
    assert client("POST", "/1025/400/65535").code == "2.01"
    observer = subprocess.Popen(
        ["coap-client-notls", "-v", "6", "-s", "4", "-B", "6", f"coap://127.0.0.1:{client.port}/1025/400/0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        import time

        time.sleep(1.0)  # let the registration land before the changes
        for name in (b"first", b"second", b"third"):
            assert client("PUT", "/group/400/name", name).code == "2.04"
            time.sleep(0.2)
        output, _ = observer.communicate(timeout=15)
    finally:
        if observer.poll() is None:
            observer.kill()
            observer.communicate(timeout=5)
    notifications = [line for line in output.splitlines() if "c:2.05" in line]
    assert len(notifications) >= 4, output  # the registration answer and three changes
    assert "'third'" in notifications[-1]
    assert any(" t:NON " in line for line in notifications[1:]), output


def test_block_wise_bodies_are_capped_by_the_model(client: LibcoapClient) -> None:
    """libcoap sends these block-wise (-b 16): a key fits its cap; a 1 KB name is refused at its first
    block, since libcoap announces the whole size in Size1."""
    assert client("POST", "/1025/401/65535").code == "2.01"
    key = bytes(range(32)) + b"\x01\x02\x03\x04" + (50).to_bytes(4, "big")
    assert client("POST", "/group/401/password-key", key, block_size=16).code == "2.04"
    refused = client("PUT", "/1025/401/0", b"n" * 1024, content_format=0, block_size=16)
    assert refused.codes == ["4.13"], refused.output
    assert "Size1:25" in refused.output
    assert client("GET", "/1025/401/0").payload == b""
