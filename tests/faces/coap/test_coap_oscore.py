"""``--coap-oscore``: requests an OSCORE context of the credentials file unprotects act with maintenance
rights, while plain requests keep the ``--coap-access`` rights (here the read-only default of a wildcard
bind). A real aiocoap OSCORE client talks to the in-process emulator over 127.0.0.1; the contexts are
fresh directories in tmp_path (OSCORE contexts must never be reused across runs).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.defaults
import pytest

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.cli import main

pytestmark = pytest.mark.skipif(
    bool(aiocoap.defaults.oscore_missing_modules()), reason="the oscore extra is not installed"
)
SECRET = "emulator-test-master-secret"


def context_dir(root: Path, name: str, sender: str, recipient: str, secret: str = SECRET) -> Path:
    directory = root / name
    directory.mkdir()
    settings = {"sender-id_hex": sender, "recipient-id_hex": recipient, "secret_ascii": secret}
    (directory / "settings.json").write_text(json.dumps(settings))
    return directory


def code(response: Any) -> str:
    return f"{int(response.code) >> 5}.{int(response.code) & 0x1F:02d}"


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    server_context = context_dir(tmp_path, "server", "01", "02")
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({":maintainer": {"oscore": {"basedir": f"{server_context}/"}}}))
    emulator = Emulator(
        ServeOptions(
            state=":memory:",
            coap=Endpoint("0.0.0.0", 0),
            coap_oscore=str(credentials),
            tcp=None,
            ws=None,
            http=None,
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


async def client_for(emulator: Emulator, context: Path | None) -> Any:
    client = await aiocoap.Context.create_client_context()
    if context is not None:
        assert emulator.coap_address is not None
        uri = f"coap://127.0.0.1:{emulator.coap_address[1]}/*"
        client.client_credentials.load_from_dict({uri: {"oscore": {"basedir": f"{context}/"}}})
    return client


async def call(client: Any, emulator: Emulator, method: Any, path: str, payload: bytes = b"") -> Any:
    assert emulator.coap_address is not None
    uri = f"coap://127.0.0.1:{emulator.coap_address[1]}{path}"
    return await asyncio.wait_for(
        client.request(aiocoap.Message(code=method, uri=uri, payload=payload)).response, 10
    )


async def test_an_oscore_client_has_maintenance_rights_and_a_plain_one_reads_only(
    emulator: Emulator, tmp_path: Path
) -> None:
    plain = await client_for(emulator, None)
    protected = await client_for(emulator, context_dir(tmp_path, "client", "02", "01"))
    try:
        assert code(await call(plain, emulator, aiocoap.PUT, "/1025/65535/0", b"plain")) == "4.01"
        changed = await call(protected, emulator, aiocoap.PUT, "/1025/65535/0", b"sealed")
        assert code(changed) == "2.04"
        assert code(await call(protected, emulator, aiocoap.POST, "/group/93/create")) == "2.01"
        assert (await call(plain, emulator, aiocoap.GET, "/1025/65535/0")).payload == b"sealed"
    finally:
        await plain.shutdown()
        await protected.shutdown()


async def test_a_client_with_the_wrong_secret_changes_nothing(emulator: Emulator, tmp_path: Path) -> None:
    impostor = await client_for(emulator, context_dir(tmp_path, "impostor", "02", "01", secret="guessed"))
    plain = await client_for(emulator, None)
    try:
        try:
            response = await call(impostor, emulator, aiocoap.PUT, "/1025/65535/0", b"taken")
        except aiocoap.error.Error:
            pass  # the impostor cannot even read the (unprotected) refusal as an answer
        else:
            assert code(response) in ("4.00", "4.01"), code(response)
        assert (await call(plain, emulator, aiocoap.GET, "/1025/65535/0")).payload == b"admin"
    finally:
        await impostor.shutdown()
        await plain.shutdown()


def test_unreadable_credentials_are_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.json"
    args = [
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
        ":memory:",
    ]
    assert main([*args, "--coap-oscore", str(missing)]) == 2
    assert "cannot read the OSCORE credentials" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert main([*args, "--coap-oscore", str(empty)]) == 2
    assert "no OSCORE security context" in capsys.readouterr().err
