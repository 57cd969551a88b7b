"""Variables and bundles over CoAP: canonical and alias paths, SenML, Observe, and durability.

The CoAP face serves objects 1028 and 1029 from the model like every other object: values as hex text
or raw bytes (octet-stream), instances as SenML, alias paths (``/variable/{v}/value``,
``/bundle/{b}/values``). Its maintenance caller reaches every variable whatever the access lists say.
A value written over CoAP, or by a value source (``source_write``), notifies the observers of the
variable, of ``/1029/{v}`` and of the bundle's values; acknowledged writes survive a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from test_coap_observe import Observer

from tap_emulator.app import CoapAccess, Emulator, Endpoint, ServeOptions
from tap_emulator.codec import tlv
from tap_emulator.config import PROFILES_DIR

OCTET, SENML_JSON = 42, 110


@contextlib.asynccontextmanager
async def demo_emulator(tmp_path: Path, access: CoapAccess | None = None) -> AsyncIterator[Emulator]:
    emulator = Emulator(
        ServeOptions(
            profile="demo",
            state=str(tmp_path / "device.sqlite3"),
            coap=Endpoint("127.0.0.1", 0),
            tcp=None,
            ws=None,
            http=None,
            store="off",
            coap_access=access,
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with demo_emulator(tmp_path) as emulator:
        yield emulator


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context()
    try:
        yield context
    finally:
        await context.shutdown()


def base(emulator: Emulator) -> str:
    assert emulator.coap_address is not None
    return f"coap://127.0.0.1:{emulator.coap_address[1]}"


async def request(
    context: Any,
    method: str,
    uri: str,
    payload: bytes = b"",
    *,
    content_format: int | None = None,
    accept: int | None = None,
) -> Any:
    message = aiocoap.Message(code=getattr(aiocoap, method), uri=uri, payload=payload)
    if content_format is not None:
        message.opt.content_format = content_format
    if accept is not None:
        message.opt.accept = accept
    return await asyncio.wait_for(context.request(message).response, 5)


async def test_values_over_canonical_and_alias_paths(demo: Emulator, client: Any) -> None:
    uri = base(demo)
    response = await request(client, "GET", f"{uri}/variable/10/value")
    assert response.payload == struct.pack(">f", 21.5).hex().encode()
    # Maintenance reaches the admin-only bundle; PUT and POST (setValue) both write.
    assert str((await request(client, "PUT", f"{uri}/1029/30/4", b"0000002a")).code) == "2.04 Changed"
    raw = await request(client, "GET", f"{uri}/1029/30/4", accept=OCTET)
    assert raw.payload == (42).to_bytes(4, "big")
    written = await request(
        client, "POST", f"{uri}/variable/30/set-value", (7).to_bytes(4, "big"), content_format=OCTET
    )
    assert str(written.code) == "2.04 Changed"
    values = await request(client, "GET", f"{uri}/bundle/3/values", accept=OCTET)
    (node,) = tlv.decode(values.payload)
    assert [(c.id, c.value) for c in node.value if isinstance(c, tlv.TlvNode)] == [
        (30, (7).to_bytes(4, "big")),
        (31, (1500).to_bytes(4, "big")),
    ]
    assert (await request(client, "GET", f"{uri}/variable/10/unit")).payload == b"C"
    assert (await request(client, "GET", f"{uri}/1029/10/1")).payload == b"19"


async def test_bad_values_get_a_clear_4xx(demo: Emulator, client: Any) -> None:
    uri = base(demo)
    assert str((await request(client, "PUT", f"{uri}/1029/30/4", b"00")).code) == "4.00 Bad Request"
    assert str((await request(client, "PUT", f"{uri}/1029/30/4", b"zz")).code) == "4.00 Bad Request"
    assert str((await request(client, "GET", f"{uri}/1029/99/4")).code) == "4.04 Not Found"
    assert str((await request(client, "PUT", f"{uri}/1029/30/0", b"1")).code) == "4.00 Bad Request"
    assert str((await request(client, "PUT", f"{uri}/1028/1/0", b"4101")).code) == "4.00 Bad Request"
    too_long = await request(client, "PUT", f"{uri}/1029/30/4", b"00" * 2000)
    assert str(too_long.code) == "4.13 Request Entity Too Large"


async def test_an_instance_reads_as_senml(demo: Emulator, client: Any) -> None:
    response = await request(client, "GET", f"{base(demo)}/1029/11", accept=SENML_JSON)
    records = {r["n"]: r for r in json.loads(response.payload)}
    assert records["4"]["vd"] == "ACg"  # base64url of 00 28 (40)
    assert records["6"]["v"] == 1 and records["9"]["vs"] == "%"


async def test_a_coap_caller_without_rights_is_refused(tmp_path: Path, client: Any) -> None:
    async with demo_emulator(tmp_path, CoapAccess.ANONYMOUS) as emulator:
        uri = base(emulator)
        assert (await request(client, "GET", f"{uri}/1029/10/4")).code.is_successful()
        assert str((await request(client, "GET", f"{uri}/1029/30/4")).code) == "4.01 Unauthorized"
        refused = await request(client, "PUT", f"{uri}/1029/10/4", b"00000000")
        assert str(refused.code) == "4.01 Unauthorized"


async def test_observers_hear_coap_writes_and_value_sources(demo: Emulator, client: Any) -> None:
    uri = base(demo)
    observers = {
        "value": Observer(client, f"{uri}/variable/11/value"),
        "instance": Observer(client, f"{uri}/1029/11", accept=SENML_JSON),
        "bundle": Observer(client, f"{uri}/1028/1/1"),
    }
    try:
        for observer in observers.values():
            await observer.first()
        other = await aiocoap.Context.create_client_context()
        try:
            await request(other, "PUT", f"{uri}/1029/11/4", b"0063")
        finally:
            await other.shutdown()
        assert (await observers["value"].next()).payload == b"0063"
        assert b'"vd":"AGM"' in (await observers["instance"].next()).payload
        assert b"0063" in (await observers["bundle"].next()).payload
        assert demo.tree is not None
        assert demo.tree.variables.source_write(11, 1234.4) is True
        assert (await observers["value"].next()).payload == (1234).to_bytes(2, "big").hex().encode()
        assert (1234).to_bytes(2, "big").hex().encode() in (await observers["bundle"].next()).payload
    finally:
        for observer in observers.values():
            observer.cancel()


async def test_acknowledged_values_survive_sigkill(spawn_server: Callable[..., Any], tmp_path: Path) -> None:
    state = tmp_path / "device.sqlite3"
    profile = str(PROFILES_DIR / "demo.toml")
    server = spawn_server("--profile", profile, "--state", str(state))
    acknowledged: dict[int, bytes] = {}
    context = await aiocoap.Context.create_client_context()
    try:

        async def stream(variable: int) -> None:
            for step in range(20):
                value = (variable * 1000 + step).to_bytes(4, "big")
                response = await request(
                    context,
                    "PUT",
                    f"coap://127.0.0.1:{server.port}/1029/{variable}/4",
                    value,
                    content_format=OCTET,
                )
                assert str(response.code) == "2.04 Changed"
                acknowledged[variable] = value

        created = await request(context, "POST", f"coap://127.0.0.1:{server.port}/1029/70/65535")
        assert str(created.code) == "2.01 Created"
        await request(context, "PUT", f"coap://127.0.0.1:{server.port}/1029/70/0", b"536871936")  # 0x20000400
        await request(context, "PUT", f"coap://127.0.0.1:{server.port}/1028/3/0", b"410003")  # anonymous: RW
        await asyncio.gather(*(stream(v) for v in (20, 30)))
        server.process.send_signal(signal.SIGKILL)
    finally:
        await context.shutdown()
    assert server.process.wait(10) == -signal.SIGKILL
    restarted = spawn_server("--profile", profile, "--state", str(state))
    context = await aiocoap.Context.create_client_context()
    try:
        uri = f"coap://127.0.0.1:{restarted.port}"
        for variable, value in acknowledged.items():
            response = await request(context, "GET", f"{uri}/1029/{variable}/4", accept=OCTET)
            assert response.payload == value, variable
        assert (await request(context, "GET", f"{uri}/1029/31/4", accept=OCTET)).payload == acknowledged[20]
        assert (await request(context, "GET", f"{uri}/1029/70/0")).payload == b"536871936"
        acl = await request(context, "GET", f"{uri}/1028/3/0", accept=OCTET)
        assert bytes([0x41, 0, 3]) in acl.payload
    finally:
        await context.shutdown()
