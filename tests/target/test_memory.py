"""The emulated target memory against a plain bytearray: sparse pages read and write like flat bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tap_emulator.target.memory import PAGE_SIZE, MemoryRegion, TargetMemory, TargetMemoryError, overlaps

BASE, SIZE = 0x20000000, 4 * PAGE_SIZE
spans = st.tuples(st.integers(0, SIZE - 1), st.binary(min_size=1, max_size=600))


@given(st.lists(spans, max_size=20), st.integers(0, SIZE - 1), st.integers(0, 700))
def test_memory_reads_as_a_flat_bytearray(writes: list[tuple[int, bytes]], at: int, length: int) -> None:
    memory, reference = TargetMemory(MemoryRegion(BASE, SIZE)), bytearray(SIZE)
    for offset, data in writes:
        data = data[: SIZE - offset]
        memory.write(BASE + offset, data)
        reference[offset : offset + len(data)] = data
    length = min(length, SIZE - at)
    assert memory.read(BASE + at, length) == bytes(reference[at : at + length])
    stored = TargetMemory(memory.region)
    stored.load({n: d for n, d in memory.pages_of(BASE, SIZE).items()})
    assert stored.read(BASE, SIZE) == bytes(reference)


def test_accesses_outside_the_region_are_refused() -> None:
    memory = TargetMemory(MemoryRegion(BASE, SIZE))
    for address, length in ((BASE - 1, 1), (BASE + SIZE - 1, 2), (0, 4)):
        with pytest.raises(TargetMemoryError):
            memory.read(address, length)
        with pytest.raises(TargetMemoryError):
            memory.write(address, bytes(length))
    with pytest.raises(TargetMemoryError):
        MemoryRegion(0xFFFFFFFF, 2)


def test_overlaps() -> None:
    assert overlaps((0, 4), (3, 1)) and not overlaps((0, 4), (4, 4)) and overlaps((8, 1), (0, 9))
