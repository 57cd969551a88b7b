"""The target's memory: bytes at 32-bit addresses, as the SDK addresses a variable (``/1029/{v}/0``).

Why a memory and not a value per variable: on a real Tap a variable is a window on the target's RAM,
so two variables at one address (or overlapping ones) see the same bytes, and a write through one is
read through the other. The memory is sparse (pages that were never written read as zeros) and
bounded by the profile's region: a variable outside it is refused. It is sans-IO; the tree makes the
pages a write touched durable (``pages_of``) and reloads them at start (``load``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["ADDRESS_SPACE", "PAGE_SIZE", "MemoryRegion", "TargetMemory", "TargetMemoryError"]

PAGE_SIZE = 256
ADDRESS_SPACE = 1 << 32


class TargetMemoryError(ValueError):
    """An access outside the memory region."""


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    """The addresses the target answers: ``base`` .. ``base + size - 1`` (inside the 32-bit space)."""

    base: int = 0
    size: int = ADDRESS_SPACE

    def __post_init__(self) -> None:
        if self.base < 0 or self.size < 1 or self.base + self.size > ADDRESS_SPACE:
            raise TargetMemoryError("the memory region must lie in the 32-bit address space")

    def contains(self, address: int, length: int) -> bool:
        return self.base <= address and address + length <= self.base + self.size

    def describe(self) -> str:
        return f"0x{self.base:08X}..0x{self.base + self.size - 1:08X}"


def overlaps(first: tuple[int, int], second: tuple[int, int]) -> bool:
    """Whether two (address, length) spans share a byte."""
    (a, a_len), (b, b_len) = first, second
    return a < b + b_len and b < a + a_len


class TargetMemory:
    """Sparse bytes of one region, in pages of ``PAGE_SIZE``."""

    def __init__(self, region: MemoryRegion) -> None:
        self.region = region
        self._pages: dict[int, bytearray] = {}
        # Grows with every change, so readers may cache what they derived from the bytes.
        self.generation = 0

    def load(self, pages: Mapping[int, bytes]) -> None:
        """Replace the contents by stored pages (page number -> its bytes)."""
        self.generation += 1
        self._pages = {
            number: bytearray(data.ljust(PAGE_SIZE, b"\0")[:PAGE_SIZE]) for number, data in pages.items()
        }

    def _check(self, address: int, length: int) -> None:
        if length < 0 or not self.region.contains(address, length):
            raise TargetMemoryError(
                f"{length} bytes at 0x{address:08X} are outside the target memory {self.region.describe()}"
            )

    def read(self, address: int, length: int) -> bytes:
        self._check(address, length)
        page, start = divmod(address, PAGE_SIZE)
        if start + length <= PAGE_SIZE:  # the usual variable: within one page
            data = self._pages.get(page)
            return bytes(length) if data is None else bytes(data[start : start + length])
        out = bytearray(length)
        offset = 0
        while offset < length:
            page, start = divmod(address + offset, PAGE_SIZE)
            take = min(PAGE_SIZE - start, length - offset)
            data = self._pages.get(page)
            if data is not None:
                out[offset : offset + take] = data[start : start + take]
            offset += take
        return bytes(out)

    def write(self, address: int, data: bytes) -> None:
        self._check(address, len(data))
        self.generation += 1
        offset = 0
        while offset < len(data):
            page, start = divmod(address + offset, PAGE_SIZE)
            take = min(PAGE_SIZE - start, len(data) - offset)
            stored = self._pages.setdefault(page, bytearray(PAGE_SIZE))
            stored[start : start + take] = data[offset : offset + take]
            offset += take

    def pages_of(self, address: int, length: int) -> dict[int, bytes]:
        """The current contents of every page the span touches (what a durable write stores)."""
        first, last = address // PAGE_SIZE, (address + max(length, 1) - 1) // PAGE_SIZE
        return {n: bytes(self._pages.get(n, bytes(PAGE_SIZE))) for n in range(first, last + 1)}

    def page_numbers(self) -> Iterable[int]:
        return sorted(self._pages)
