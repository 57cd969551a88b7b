"""The emulated target: the microcontroller a Tap is wired to, as far as the Tap's variables see it."""

from tap_emulator.target.memory import PAGE_SIZE, MemoryRegion, TargetMemory, TargetMemoryError

__all__ = ["PAGE_SIZE", "MemoryRegion", "TargetMemory", "TargetMemoryError"]
