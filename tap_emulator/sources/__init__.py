"""Value sources: a device profile's ``[[sources]]`` move its variables as a target would.

``generators`` computes the values (sans-IO), ``profile`` reads the tables, ``runner`` drives them all
from one task into the variable handler (``VariableSink.source_write``).
"""

from tap_emulator.sources.generators import (
    Constant,
    Counter,
    EndMode,
    Generator,
    Interpolation,
    RandomWalk,
    Replay,
    Sine,
)
from tap_emulator.sources.profile import SOURCE_KINDS, SourceConfig, SourceError, parse_sources
from tap_emulator.sources.runner import Clock, MonotonicClock, SampleSchedule, SourceRunner, VariableSink

__all__ = [
    "SOURCE_KINDS",
    "Clock",
    "Constant",
    "Counter",
    "EndMode",
    "Generator",
    "Interpolation",
    "MonotonicClock",
    "RandomWalk",
    "Replay",
    "SampleSchedule",
    "Sine",
    "SourceConfig",
    "SourceError",
    "SourceRunner",
    "VariableSink",
    "parse_sources",
]
