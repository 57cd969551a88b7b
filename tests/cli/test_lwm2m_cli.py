"""The LwM2M options of ``serve``: a bad server URI or lifetime, or registration without the CoAP face,
is a clear message and exit status 2, never a traceback."""

from __future__ import annotations

import pytest

from tap_emulator.cli import main


@pytest.mark.parametrize(
    "args",
    [
        ["--lwm2m-server", "http://127.0.0.1:5683"],
        ["--lwm2m-server", "coap://127.0.0.1:99999"],
        ["--lwm2m-bootstrap", "coaps://127.0.0.1:5684"],
        ["--lwm2m-server", "coap://127.0.0.1:5683", "--lifetime", "0"],
        ["--lwm2m-server", "coap://127.0.0.1:5683", "--lifetime", "soon"],
    ],
)
def test_bad_lwm2m_options_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--state", ":memory:", *args]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_registration_without_the_coap_face_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--state", ":memory:", "--coap", "off", "--lwm2m-server", "coap://127.0.0.1:5683"]
    assert main(argv) == 2
    assert "needs the CoAP face" in capsys.readouterr().err
