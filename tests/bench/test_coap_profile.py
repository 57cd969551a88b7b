"""Smoke test of ``python -m bench.coap_profile``: both paths time a pass and end with a 2.05 reply."""

from __future__ import annotations

import pytest

from bench.coap_profile import main
from tap_emulator.codec.coap import ACK, decode


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fast_path", ["on", "off"])
def test_it_times_gets_and_prints_the_last_reply(fast_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "50", "--fast-path", fast_path]) == 0
    timing, reply = capsys.readouterr().out.splitlines()[-2:]
    assert timing.startswith(f"GET /1025/0/0, fast path {fast_path}: ") and "us per request" in timing
    last = decode(bytes.fromhex(reply.removeprefix("last reply: ")))
    assert (last.mtype, last.code, last.payload) == (ACK, 0x45, b"anonymous")


def test_a_pass_needs_a_request() -> None:
    with pytest.raises(SystemExit):
        main(["--requests", "0"])
