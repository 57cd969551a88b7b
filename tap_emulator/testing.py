"""Emulated Taps for other projects' tests: ``EmulatedTap`` (asyncio) and ``ThreadedTap`` (any test).

An app's integration test wants a device that starts in milliseconds on free ports, with throw-away
state, that it can also steer (faults, reboot, reset) and whose trace it can read::

    from tap_emulator.testing import EmulatedTap

    async with EmulatedTap(profile="default", faces=("coap", "ws")) as tap:
        tap.coap_uri            # "coap://127.0.0.1:40123"
        tap.ws_url              # "ws://127.0.0.1:40124"
        tap.set_faults({"seed": 1, "rules": [{"face": "ws", "drop": 0.2}]})
        await tap.reboot()
        tap.trace               # the last trace events (dicts)

Every face binds 127.0.0.1 port 0; the state lives in a temporary directory removed on exit unless
``state`` names a file; the management store is off (the HTTP face keeps a private in-memory one).
``ThreadedTap`` runs the same device in a thread of its own (its own event loop), so synchronous tests
and tests on any event loop use it alike; the pytest plugin (``tap_emulator.pytest_plugin``) gives it
as the ``tap_emulator`` fixture.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from tap_emulator.app import Emulator, Endpoint, ServeOptions, format_address
from tap_emulator.config import SecurityMode
from tap_emulator.control import DeviceControl
from tap_emulator.trace import Trace

__all__ = ["ALL_FACES", "EmulatedTap", "ThreadedTap"]

ALL_FACES = ("coap", "tcp", "ws", "http")
_HOST = "127.0.0.1"
_START_TIMEOUT = 60.0
T = TypeVar("T")


class EmulatedTap:
    """One emulated device in the running event loop, for ``async with``."""

    def __init__(
        self,
        profile: str = "default",
        faces: Iterable[str] = ALL_FACES,
        *,
        state: str | Path | None = None,
        security: SecurityMode | str | None = None,
        faults: Mapping[str, Any] | None = None,
        trace: bool | str = False,
        cloud_config: str | None = None,
    ) -> None:
        chosen = set(faces)
        unknown = chosen - set(ALL_FACES)
        if unknown:
            raise ValueError(
                f"unknown face(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL_FACES)}"
            )
        self._workdir: str | None = None
        if state is None:
            self._workdir = tempfile.mkdtemp(prefix="tap-emulator-")
            state = Path(self._workdir) / "device.sqlite3"

        def endpoint(face: str) -> Endpoint | None:
            return Endpoint(_HOST, 0) if face in chosen else None

        self.options = ServeOptions(
            profile=profile,
            state=str(state),
            coap=endpoint("coap"),
            tcp=endpoint("tcp"),
            ws=endpoint("ws"),
            http=endpoint("http"),
            store="off",
            security=None if security is None else SecurityMode(security),
            trace=trace,
            cloud_config=cloud_config,
        )
        self._initial_faults = faults
        self.emulator: Emulator | None = None
        self.control: DeviceControl | None = None
        self._trace: Trace | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        emulator = Emulator(self.options, announce=lambda _line: None)
        emulator.trace.enable()  # the recent events are the test's to read
        try:
            await emulator.start()
        except BaseException:
            self._cleanup()
            raise
        self.emulator = emulator
        self.control = emulator.control or DeviceControl(emulator)
        self._trace = emulator.trace
        if self._initial_faults is not None:
            self.control.set_faults(self._initial_faults)

    async def stop(self) -> None:
        emulator, self.emulator = self.emulator, None
        try:
            if emulator is not None:
                await emulator.stop()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # ------------------------------------------------------------------ endpoints

    def _running(self) -> tuple[Emulator, DeviceControl]:
        if self.emulator is None or self.control is None:
            raise RuntimeError("the emulated Tap is not running (use it inside 'async with')")
        return self.emulator, self.control

    def _address(self, face: str) -> str:
        emulator, _ = self._running()
        address = getattr(emulator, f"{face}_address")
        if address is None:
            raise RuntimeError(f"the {face} face is off (faces={sorted(self.faces)})")
        return format_address(address)

    @property
    def faces(self) -> set[str]:
        return {f for f in ALL_FACES if getattr(self.options, f) is not None}

    @property
    def serial(self) -> str:
        emulator, _ = self._running()
        assert emulator.tree is not None
        return emulator.tree.serial_number

    @property
    def coap_uri(self) -> str:
        return f"coap://{self._address('coap')}"

    @property
    def tcp_address(self) -> tuple[str, int]:
        host, _, port = self._address("tcp").rpartition(":")
        return host, int(port)

    @property
    def ws_url(self) -> str:
        return f"ws://{self._address('ws')}"

    @property
    def http_url(self) -> str:
        return f"http://{self._address('http')}"

    # ------------------------------------------------------------------ control (tap_emulator.control)

    async def info(self) -> dict[str, Any]:
        return await self._running()[1].info()

    async def state_dump(self) -> dict[str, Any]:
        return await self._running()[1].state()

    async def reboot(self) -> None:
        await self._running()[1].reboot()

    async def factory_reset(self) -> None:
        await self._running()[1].factory_reset()

    def sessions(self) -> list[dict[str, Any]]:
        return self._running()[1].sessions()

    def close_session(self, session_id: int) -> None:
        self._running()[1].close_session(session_id)

    def lockouts(self) -> list[dict[str, Any]]:
        return self._running()[1].lockouts()

    def clear_lockouts(self) -> int:
        return self._running()[1].clear_lockouts()

    def set_faults(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        return self._running()[1].set_faults(plan)

    def clear_faults(self) -> dict[str, Any]:
        return self._running()[1].clear_faults()

    def offline(self, seconds: float) -> dict[str, Any]:
        return self._running()[1].go_offline(seconds)

    @property
    def trace(self) -> list[dict[str, Any]]:
        """The last trace events, oldest first (still readable once the device stopped)."""
        if self._trace is None:
            raise RuntimeError("the emulated Tap never started")
        return list(self._trace.recent)


class ThreadedTap:
    """``EmulatedTap`` in a thread with its own event loop: a ``with`` block, or ``start``/``stop``.

    Endpoints are the same properties; control operations are plain calls (run in the device's loop).
    """

    def __init__(self, profile: str = "default", faces: Iterable[str] = ALL_FACES, **options: Any) -> None:
        self.tap = EmulatedTap(profile, faces, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="tap-emulator", daemon=True)
        self._thread.start()
        try:
            self._run(self.tap.start(), _START_TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self._run(self.tap.stop(), _START_TIMEOUT)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the emulated Tap is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _call(self, name: str, *args: Any) -> Any:
        async def call() -> Any:
            return getattr(self.tap, name)(*args)

        return self._run(call())

    @property
    def serial(self) -> str:
        return self.tap.serial

    @property
    def coap_uri(self) -> str:
        return self.tap.coap_uri

    @property
    def tcp_address(self) -> tuple[str, int]:
        return self.tap.tcp_address

    @property
    def ws_url(self) -> str:
        return self.tap.ws_url

    @property
    def http_url(self) -> str:
        return self.tap.http_url

    def info(self) -> dict[str, Any]:
        return self._run(self.tap.info())

    def state_dump(self) -> dict[str, Any]:
        return self._run(self.tap.state_dump())

    def reboot(self) -> None:
        self._run(self.tap.reboot())

    def factory_reset(self) -> None:
        self._run(self.tap.factory_reset())

    def sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("sessions")
        return result

    def close_session(self, session_id: int) -> None:
        self._call("close_session", session_id)

    def lockouts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("lockouts")
        return result

    def clear_lockouts(self) -> int:
        return int(self._call("clear_lockouts"))

    def set_faults(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("set_faults", plan)
        return result

    def clear_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("clear_faults")
        return result

    def offline(self, seconds: float) -> dict[str, Any]:
        result: dict[str, Any] = self._call("offline", seconds)
        return result

    @property
    def trace(self) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            return self.tap.trace

        return self._run(read())
