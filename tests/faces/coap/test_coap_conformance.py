"""RFC 7252 rules the CoAP face must follow on the wire (issue 9, defects 7 and 8): unknown critical
options, conditional requests, proxying, reserved token lengths, text options that are not UTF-8, and
block size exponent 7 over UDP; malformed datagrams log one short, rate-limited line and no traceback.

The server is the in-process emulator on 127.0.0.1 (port 0); the clients are aiocoap and a raw UDP socket
(``rawcoap``), which sends bytes that aiocoap as a client would refuse to build.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import pytest
from rawcoap import ACK, CON, GET, NON, PUT, RST, URI_PATH, RawClient, encode

IF_MATCH, ETAG, IF_NONE_MATCH, URI_QUERY, BLOCK2, BLOCK1, PROXY_URI, PROXY_SCHEME = (
    1,
    4,
    5,
    15,
    23,
    27,
    35,
    39,
)
_mids = itertools.count(0x2000)


def code(response: Any) -> str:
    return f"{int(response.code) >> 5}.{int(response.code) & 0x1F:02d}"


def path(p: str) -> list[tuple[int, bytes]]:
    return [(URI_PATH, segment.encode()) for segment in p.strip("/").split("/")]


@pytest.fixture
async def raw(emulator: Any) -> AsyncIterator[RawClient]:
    client = await RawClient.open(emulator.coap_address[1])
    try:
        yield client
    finally:
        client.close()


async def exchange(raw: RawClient, datagram: bytes) -> Any:
    raw.send(datagram)
    return await raw.receive()


async def nothing_comes(raw: RawClient, seconds: float = 0.3) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await raw.receive(timeout=seconds)


# ----------------------------------------------------------------------------------- options


@pytest.mark.parametrize("number", [9, 19, 21, 31, 2049, 65001])  # OSCORE, Q-Block1, EDHOC, Q-Block2, unknown
async def test_an_unknown_critical_option_is_4_02(raw: RawClient, number: int) -> None:
    mid = next(_mids)
    reply = await exchange(raw, encode(CON, GET, mid, b"\x01", [*path("/1025/65535/0"), (number, b"\x01")]))
    assert (reply.mtype, reply.mid, reply.token, reply.dotted_code) == (ACK, mid, b"\x01", "4.02")
    assert str(number).encode() in reply.payload


async def test_an_unknown_elective_option_is_ignored(raw: RawClient) -> None:
    reply = await exchange(
        raw, encode(CON, GET, next(_mids), b"\x02", [*path("/1025/65535/0"), (2048, b"x")])
    )
    assert (reply.dotted_code, reply.payload) == ("2.05", b"admin")


async def test_a_block1_transfer_with_an_unknown_critical_option_is_refused_at_its_first_block(
    raw: RawClient,
) -> None:
    options = [*path("/1025/65535/0"), (BLOCK1, bytes([0x08])), (65001, b"")]  # block 0, more, 16 bytes
    reply = await exchange(raw, encode(CON, PUT, next(_mids), b"\x03", options, b"x" * 16))
    assert reply.dotted_code == "4.02"


@pytest.mark.parametrize(
    "option", [(PROXY_URI, b"coap://192.0.2.1/1025/0/0"), (PROXY_SCHEME, b"http")], ids=["uri", "scheme"]
)
async def test_proxy_requests_are_5_05(raw: RawClient, option: tuple[int, bytes]) -> None:
    reply = await exchange(raw, encode(CON, GET, next(_mids), b"\x04", [*path("/1025/65535/0"), option]))
    assert reply.dotted_code == "5.05"


async def test_proxy_uri_is_5_05_through_aiocoap_too(coap: Any) -> None:
    message = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{coap.port}/1025/0/0")
    message.opt.proxy_uri = "coap://192.0.2.1/1025/0/0"
    response = await asyncio.wait_for(coap.context.request(message).response, 5)
    assert code(response) == "5.05"


# ----------------------------------------------------------------------------------- conditions


async def conditional(coap: Any, method: Any, p: str, payload: bytes = b"", **opts: Any) -> Any:
    message = aiocoap.Message(code=method, uri=f"coap://127.0.0.1:{coap.port}{p}", payload=payload)
    for name, value in opts.items():
        setattr(message.opt, name, value)
    return await asyncio.wait_for(coap.context.request(message).response, 5)


async def test_get_gives_an_etag_that_names_the_value_in_every_format(coap: Any) -> None:
    text = await coap.request("GET", "/1025/65534/0")
    cbor = await coap.request("GET", "/group/65534/name", accept=60)
    assert text.opt.etag and len(text.opt.etag) == 8
    assert cbor.opt.etag == text.opt.etag
    assert code(await coap.request("PUT", "/1025/65534/0", b"renamed")) == "2.04"
    assert (await coap.request("GET", "/1025/65534/0")).opt.etag != text.opt.etag


async def test_if_match_writes_only_over_the_value_it_names(coap: Any) -> None:
    etag = (await coap.request("GET", "/1025/65534/0")).opt.etag
    stale = b"\x00" * 8
    refused = await conditional(coap, aiocoap.PUT, "/1025/65534/0", b"lost", if_match=[stale])
    assert code(refused) == "4.12"
    assert (await coap.request("GET", "/1025/65534/0")).payload == b"supervisor"
    assert (
        code(await conditional(coap, aiocoap.PUT, "/1025/65534/0", b"won", if_match=[stale, etag])) == "2.04"
    )
    # The ETag named the old value: the same condition now fails.
    assert code(await conditional(coap, aiocoap.PUT, "/1025/65534/0", b"again", if_match=[etag])) == "4.12"
    assert (await coap.request("GET", "/1025/65534/0")).payload == b"won"


async def test_an_empty_if_match_requires_the_target_to_exist(coap: Any) -> None:
    assert code(await conditional(coap, aiocoap.PUT, "/1025/65534/4", b"60", if_match=[b""])) == "2.04"
    missing = await conditional(coap, aiocoap.PUT, "/1025/4242/4", b"60", if_match=[b""])
    assert code(missing) == "4.12"
    # A write-only resource exists with its group: an empty If-Match holds, a tag never does.
    assert code(await conditional(coap, aiocoap.POST, "/1025/65534/2", b"s3cret", if_match=[b""])) == "2.04"
    assert (
        code(await conditional(coap, aiocoap.POST, "/1025/65534/2", b"s3cret", if_match=[b"\x01"])) == "4.12"
    )


async def test_if_none_match_writes_only_what_does_not_exist(coap: Any) -> None:
    assert code(await conditional(coap, aiocoap.PUT, "/1025/65534/0", b"x", if_none_match=True)) == "4.12"
    assert (await coap.request("GET", "/1025/65534/0")).payload == b"supervisor"
    assert code(await conditional(coap, aiocoap.POST, "/group/77/create", if_none_match=True)) == "2.01"
    assert code(await conditional(coap, aiocoap.POST, "/group/77/create", if_none_match=True)) == "4.12"


# ----------------------------------------------------------------------------------- framing


@pytest.mark.parametrize("token_length", range(9, 16))
async def test_a_reserved_token_length_is_a_message_format_error(raw: RawClient, token_length: int) -> None:
    body = bytes(range(token_length)) + bytes([0xB4]) + b"1025"  # what follows would be a token and path
    mid = next(_mids)
    raw.send(bytes([0x40 | CON << 4 | token_length, GET]) + mid.to_bytes(2, "big") + body)
    reset = await raw.receive()
    assert (reset.mtype, reset.mid, reset.code, reset.payload) == (RST, mid, 0, b"")
    raw.send(bytes([0x40 | NON << 4 | token_length, GET]) + next(_mids).to_bytes(2, "big") + body)
    await nothing_comes(raw)  # a NON with a format error is ignored


@pytest.mark.parametrize(
    ("option", "name"), [(URI_PATH, b"Uri-Path"), (URI_QUERY, b"Uri-Query")], ids=["path", "query"]
)
async def test_a_text_option_that_is_not_utf8_is_4_00(
    raw: RawClient, caplog: pytest.LogCaptureFixture, option: int, name: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    options = [(URI_PATH, b"1025"), (option, b"\xff\xfe")]
    mid = next(_mids)
    reply = await exchange(raw, encode(CON, GET, mid, b"\x05\x06", options))
    assert (reply.mtype, reply.mid, reply.token, reply.dotted_code) == (ACK, mid, b"\x05\x06", "4.00")
    assert name in reply.payload and b"UTF-8" in reply.payload
    reply = await exchange(raw, encode(NON, GET, next(_mids), b"\x07", options))
    assert (reply.mtype, reply.token, reply.dotted_code) == (NON, b"\x07", "4.00")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_malformed_datagrams_log_one_short_line_per_reason(
    raw: RawClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    junk = [
        bytes([0x40 | CON << 4 | 12, GET, 0, 1]) + bytes(12),  # reserved token length
        encode(CON, GET, 2, b"", [(URI_PATH, b"\xc3\x28")]),  # not UTF-8
        bytes([0x40 | CON << 4, GET, 0, 3, 0xF1, 0]),  # reserved option delta 15
    ]
    for index in range(60):  # 20 of each; the replies must fit the client's receive buffer
        raw.send(junk[index % len(junk)])
    raw.send(encode(CON, GET, 4, b"\x09", path("/1025/65535/0")))
    while (reply := await raw.receive()).token != b"\x09":
        pass
    assert reply.dotted_code == "2.05"
    lines = [r for r in caplog.records if r.name.startswith(("tap_emulator", "coap"))]
    assert 1 <= len(lines) <= len(junk), [r.getMessage() for r in lines]
    assert all(len(r.getMessage()) < 160 and not r.exc_info for r in lines)


# ----------------------------------------------------------------------------------- block size 7


async def test_block_size_exponent_7_is_refused_over_udp(raw: RawClient) -> None:
    block1 = encode(
        CON, PUT, next(_mids), b"\x0a", [*path("/1025/65535/0"), (BLOCK1, bytes([0x0F]))], b"x" * 16
    )
    assert (await exchange(raw, block1)).dotted_code == "4.00"
    block2 = encode(
        CON, GET, next(_mids), b"\x0b", [*path("/1025"), (BLOCK2, bytes([0x17]))]
    )  # block 1, szx 7
    assert (await exchange(raw, block2)).dotted_code == "4.00"
    # The same transfers with size exponent 6 are served.
    fine = encode(CON, GET, next(_mids), b"\x0c", [*path("/1025"), (BLOCK2, bytes([0x06]))])
    assert (await exchange(raw, fine)).dotted_code == "2.05"


async def test_the_screen_answers_on_a_wildcard_bind_too(tmp_path: Any) -> None:
    """A wildcard bind uses aiocoap's udp6 transport, hooked at its own receive method."""
    from tap_emulator.app import Emulator, Endpoint, ServeOptions

    emulator = Emulator(
        ServeOptions(state=":memory:", coap=Endpoint("0.0.0.0", 0), tcp=None, ws=None, http=None),
        announce=lambda _line: None,
    )
    await emulator.start()
    assert emulator.coap_address is not None
    raw = await RawClient.open(emulator.coap_address[1])
    try:
        mid = next(_mids)
        raw.send(bytes([0x40 | CON << 4 | 12, GET]) + mid.to_bytes(2, "big") + bytes(12))
        reset = await raw.receive()
        assert (reset.mtype, reset.mid) == (RST, mid)
        reply = await exchange(raw, encode(CON, GET, next(_mids), b"\x0e", [(URI_PATH, b"\xff")]))
        assert (reply.mtype, reply.token, reply.dotted_code) == (ACK, b"\x0e", "4.00")
        reply = await exchange(raw, encode(CON, GET, next(_mids), b"\x0f", path("/1025/65535/0")))
        assert (reply.dotted_code, reply.payload) == ("2.05", b"admin")
    finally:
        raw.close()
        await emulator.stop()
