"""``serve --http`` and ``tap-emulator cloud`` as a user runs them: subprocesses, real HTTP on 127.0.0.1.

Covers the ``listening http`` line (after the other endpoints), a busy port (exit 1), a bad cloud
configuration (exit 2), clean stops on SIGINT/SIGTERM, tokens kept out of the log even at -vv, and two
``cloud`` processes on one store agreeing (SQLite file and PostgreSQL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0
OC_BASE = "/iocm/app/devgroup/v1.3.0/devGroups"
OC_APP_1 = {"app_key": "oc-app-1", "Authorization": "Bearer oc-token-1"}
SECRETS = ("iotize-alice", "oc-token-1", "app-key-1", "roma-token-1", "query-secret")


class Process:
    def __init__(self, args: list[str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("w") as stderr:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "tap_emulator", *args],
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def lines(self, count: int) -> list[str]:
        """The next ``count`` stdout lines, each within TIMEOUT (read by a thread: a buffered pipe and
        select() do not mix)."""
        import queue
        import threading

        assert self.popen.stdout is not None
        if not hasattr(self, "_queue"):
            self._queue: queue.Queue[str] = queue.Queue()
            stdout, lines = self.popen.stdout, self._queue

            def pump() -> None:
                for line in stdout:
                    lines.put(line)

            threading.Thread(target=pump, daemon=True).start()
        found = []
        for _ in range(count):
            try:
                found.append(self._queue.get(timeout=TIMEOUT).strip())
            except queue.Empty:
                raise AssertionError(f"no output in time; stderr: {self.stderr()}") from None
        return found

    def port_of(self, line: str) -> int:
        assert line.startswith("listening http 127.0.0.1:"), line
        return int(line.rsplit(":", 1)[1])

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(TIMEOUT)


Runner = Callable[..., Process]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Runner]:
    started: list[Process] = []

    def start(*args: str) -> Process:
        process = Process(list(args), tmp_path, tmp_path / f"p{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
        process.popen.communicate(timeout=10)


SERVE_HTTP = ("serve", "--coap", "127.0.0.1:0", "--tcp", "off", "--ws", "off", "--http", "127.0.0.1:0")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_announces_http_last_and_stops_cleanly(run: Runner, tmp_path: Path, sig: int) -> None:
    server = run(*SERVE_HTTP, "--state", str(tmp_path / "d.sqlite3"))
    coap, http = server.lines(2)
    assert coap.startswith("listening coap udp 127.0.0.1:")
    port = server.port_of(http)
    response = httpx.get(f"http://127.0.0.1:{port}/api/v1/devices", timeout=10)
    assert response.status_code == 200
    assert server.stop(sig) == 0
    assert "Traceback" not in server.stderr()


def test_the_http_face_is_on_by_default_at_8080_and_off_turns_it_off() -> None:
    from tap_emulator.app import Endpoint, ServeOptions
    from tap_emulator.cli import _build_parser

    assert ServeOptions().http == Endpoint("127.0.0.1", 8080)
    parser = _build_parser()
    assert parser.parse_args(["serve"]).http == Endpoint("127.0.0.1", 8080)
    assert parser.parse_args(["serve", "--http", "off"]).http is None
    assert parser.parse_args(["cloud", "--http", ":0"]).http == Endpoint("127.0.0.1", 0)


def test_a_busy_http_port_exits_1_with_a_message(run: Runner, tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        args = [*SERVE_HTTP[:-1], f"127.0.0.1:{port}", "--state", str(tmp_path / "d.sqlite3")]
        server = run(*args)
        assert server.popen.wait(TIMEOUT) == 1
        assert f"cannot listen for HTTP on 127.0.0.1:{port}: Address already in use" in server.stderr()
        assert "Traceback" not in server.stderr()
        assert server.popen.stdout is not None and server.popen.stdout.read() == ""  # nothing announced
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cloud-config", "/no/such/file.toml"), "not found"),
        (("--http", "127.0.0.1:99999"), "port must be"),
    ],
)
def test_bad_cloud_options_exit_2(run: Runner, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    for command in (SERVE_HTTP, ("cloud", "--store", f"sqlite:///{tmp_path}/s.sqlite3")):
        extra = ("--state", ":memory:") if command is SERVE_HTTP else ()
        process = run(*command, *args, *extra)
        assert process.popen.wait(TIMEOUT) == 2
        assert message in process.stderr() and "Traceback" not in process.stderr()


def test_tokens_never_reach_the_log(run: Runner, tmp_path: Path) -> None:
    server = run(*SERVE_HTTP, "--state", str(tmp_path / "d.sqlite3"), "-vv")
    port = server.port_of(server.lines(2)[1])
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        http.get("/user/groups", headers={"Authorization": "iotize-alice"}, params={"token": "query-secret"})
        http.get("/user/groups", headers={"Authorization": "iotize-alicX"})
        http.get(OC_BASE, headers=OC_APP_1, params={"accessAppId": "query-secret"})
        http.get("/device-groups/account/acct-1", headers={"app_id": "app-1", "app_key": "app-key-1"})
        http.post(
            "/v2/proj-1/link/instances/inst-1/device-groups",
            headers={"X-Auth-Token": "roma-token-1"},
            content=b"{",
        )
        http.get("/nowhere?query-secret=1")
    assert server.stop() == 0
    log = server.stderr()
    for secret in SECRETS:
        assert secret not in log


def test_cloud_defaults_to_the_store_serve_writes(run: Runner, tmp_path: Path) -> None:
    cloud = run("cloud", "--http", "127.0.0.1:0")
    port = cloud.port_of(cloud.lines(1)[0])
    assert httpx.get(f"http://127.0.0.1:{port}/api/v1/devices", timeout=10).json()["items"] == []
    assert (tmp_path / "state" / "management-store.sqlite3").exists()
    assert cloud.stop() == 0


def cloud_store_urls(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.sqlite3"
    server: str = request.getfixturevalue("pg_server")
    schema: str = request.getfixturevalue("pg_schema")
    return f"{server}?options={quote(f'-c search_path={schema}', safe='')}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return cloud_store_urls(tmp_path, request)


def test_two_cloud_processes_on_one_store_agree(run: Runner, shared_store: str) -> None:
    first = run("cloud", "--store", shared_store, "--http", "127.0.0.1:0")
    second = run("cloud", "--store", shared_store, "--http", "127.0.0.1:0")
    a = f"http://127.0.0.1:{first.port_of(first.lines(1)[0])}"
    b = f"http://127.0.0.1:{second.port_of(second.lines(1)[0])}"
    with httpx.Client(timeout=10) as http:
        created = http.post(f"{a}{OC_BASE}", json={"name": "Shared1"}, headers=OC_APP_1).json()
        read = http.get(f"{b}{OC_BASE}/{created['id']}", headers=OC_APP_1).json()
        assert read == created
        duplicate = http.post(f"{b}{OC_BASE}", json={"name": "Shared1"}, headers=OC_APP_1)
        assert duplicate.status_code == 200 and duplicate.json()["error_code"] == "100602"
        listed = http.get(f"{a}/api/v1/device-groups").json()
        assert [g["id"] for g in listed["items"]] == [created["id"]]
    assert first.stop() == 0 and second.stop() == 0
    assert "Traceback" not in first.stderr() + second.stderr()
