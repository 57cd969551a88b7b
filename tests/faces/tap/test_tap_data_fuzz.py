"""Hypothesis against variables and bundles through the Tap face: any request, in any group, is answered.

A session of the demo profile (plain login, so the fuzzer controls the group) sends random methods,
instances, resources and bodies to objects 1028 and 1029, mixed with valid configuration and value
writes. Shown: every answer is a well-formed frame with a known status and never 0xA0 (an internal
error); every bundle's values stay one well-formed OMA-TLV node; variables stay inside the target memory;
a group never gets a value write through that its bundle's access list refuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tap_support import Device, frame, make_device, plain_login

from tap_emulator.codec import tlv
from tap_emulator.codec.apdu import Method, TapStatus, decode_response
from tap_emulator.config import SecurityMode, load_profile
from tap_emulator.model import default_model
from tap_emulator.tree.handlers.bundle import WRITE, BundleHandler

BUNDLE, VARIABLE = 1028, 1029
MODEL = default_model()
RESOURCES = {obj: sorted(MODEL.objects[obj].resources) for obj in (BUNDLE, VARIABLE)}
KNOWN = frozenset(int(s) for s in TapStatus)
USERS = [("admin", "admin"), ("tech", "tech"), ("alice", "alice"), ("supervisor", "supervisor"), None]

requests = st.tuples(
    st.sampled_from([Method.GET, Method.PUT, Method.POST]),
    st.sampled_from([BUNDLE, VARIABLE]),
    st.one_of(st.sampled_from([1, 2, 3, 10, 11, 12, 20, 22, 30, 31, 40, 0xFFFF]), st.integers(0, 0xFFFF)),
    st.one_of(st.sampled_from(RESOURCES[VARIABLE] + RESOURCES[BUNDLE]), st.integers(0, 0xFFFF)),
    st.one_of(
        st.binary(max_size=12),
        st.sampled_from(
            [b"\x41\x00\x03", b"\x61\xff\x03", b"\x61\x00\x14\x02", b"\x13", b"\x20\x00\x00\x10"]
        ),
    ),
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def device(loop: asyncio.AbstractEventLoop) -> Iterator[Device]:
    profile = load_profile("demo").with_security_mode(SecurityMode.NONE)
    dev = make_device(profile)
    yield dev
    dev.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=st.sampled_from(USERS), batch=st.lists(requests, min_size=1, max_size=12))
def test_any_data_request_is_answered_and_the_data_stays_well_formed(
    loop: asyncio.AbstractEventLoop,
    device: Device,
    user: tuple[str, str] | None,
    batch: list[tuple[Method, int, int, int, bytes]],
) -> None:
    session = device.session("data-fuzz")
    if user is not None:
        answer = loop.run_until_complete(session.handle_frame(plain_login(*user)))
        assert decode_response(answer)[0] == TapStatus.CHANGED
    tree = device.tree
    group = session.group_id
    for method, obj, inst, res, body in batch:
        before = _bytes(device, obj, inst)
        status, _ = decode_response(
            loop.run_until_complete(session.handle_frame(frame(method, obj, inst, res, body)))
        )
        assert status in KNOWN and status != TapStatus.INTERNAL_SERVER_ERROR
        value_write = obj == VARIABLE and res in (4, 5) and method is not Method.GET
        if value_write and status == TapStatus.CHANGED:
            layout = tree.variables.layout(inst)
            assert layout is not None
            assert tree.handler_of(BundleHandler).rights_of(layout.bundle_id, group) & WRITE
        elif value_write and before is not None:
            layout = tree.variables.layout(inst)
            assert layout is not None and tree.memory.read(*layout.span) == before
    for bid in tree.instance_ids(BUNDLE):
        (node,) = tlv.decode(tree.handler_of(BundleHandler).values_tlv(bid))
        assert node.id == bid and all(isinstance(child, tlv.TlvNode) for child in node.value)


def _bytes(device: Device, obj: int, inst: int) -> bytes | None:
    """A variable's bytes before a request, when it is one placed inside the target memory."""
    layout = device.tree.variables.layout(inst) if obj == VARIABLE else None
    if layout is None or not device.tree.memory.region.contains(*layout.span):
        return None
    return device.tree.memory.read(*layout.span)
