"""Command line: ``tap-emulator serve | fleet | cloud | reset | store show|status | ctl | trace replay``.

``main(argv) -> int`` so tests call it in-process; every user error is one line on stderr and a
non-zero exit (2 for bad usage or configuration, 1 for a runtime failure such as a busy port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from tap_emulator import __version__
from tap_emulator.app import (
    COAP_PORT,
    HTTP_PORT,
    TAP_TCP_PORT,
    TAP_WS_PORT,
    CloudOnly,
    CoapAccess,
    Emulator,
    Endpoint,
    ServeOptions,
    default_state_path,
    open_device,
    parse_endpoint,
)
from tap_emulator.config import ConfigError, SecurityMode, load_profile, parse_broker_url
from tap_emulator.faces.tap.connections import DEFAULT_MAX_CONNECTIONS, ConnectionLimits
from tap_emulator.fleet import DEFAULT_SERIAL_FORMAT, Fleet, FleetOptions, PortRange, parse_port_range
from tap_emulator.model import ModelError
from tap_emulator.state import StateError
from tap_emulator.store import StoreError
from tap_emulator.sync import DEFAULT_STORE_NAME
from tap_emulator.sync.commands import CommandError, add_store_commands, run_store_command
from tap_emulator.trace import TRACE_LOGGER

if TYPE_CHECKING:
    from tap_emulator.faces.coap.registration import ServerUri

__all__ = ["main"]

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    pass


def _broker(text: str) -> str:
    if text != "off":
        try:
            parse_broker_url(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _endpoint(default_port: int) -> Callable[[str], Endpoint | None]:
    def parse(text: str) -> Endpoint | None:
        try:
            return parse_endpoint(text, default_port)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _lwm2m_server(text: str) -> ServerUri:
    from tap_emulator.faces.coap.registration import parse_server_uri

    try:
        return parse_server_uri(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lifetime(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text!r}: a lifetime is a whole number of seconds, 1 or more")
    return int(text)


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    return parse


def _seconds_or_off(text: str) -> float:
    """Positive seconds, or 0 for no limit."""
    with contextlib.suppress(ValueError):
        if float(text) == 0:
            return 0.0
    return _positive(float)(text)


# One place for the defaults: what ServeOptions holds is what the command line starts from.
DEFAULTS = ServeOptions()
LIMITS = DEFAULTS.connections


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an option it does not know is its own usage error (exit 2 with its usage),
    not the top-level parser's (whose usage says nothing of ``serve``'s options)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tap-emulator",
        description="Emulator of an IoTize Tap (LwM2M object 1025 over CoAP and Tap frames).",
    )
    parser.add_argument("--version", action="version", version=f"tap-emulator {__version__}")
    commands: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=_CommandParser,
    )

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile", default="default", help="device profile: a name in resources/profiles or a TOML path"
        )
        p.add_argument(
            "--state",
            default=None,
            help="state file (default: state/{serial}.sqlite3 here; ':memory:' keeps nothing)",
        )
        p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (repeat for debug)")
        p.add_argument("-q", "--quiet", action="store_true", help="only errors")

    serve = commands.add_parser("serve", help="run the emulated device")
    common(serve)
    serve.add_argument(
        "--tap-config",
        default=None,
        metavar="PATH",
        help="boot as the SDK configurator leaves a device given this tap-config.json (its groups, "
        "security, bundles and variables over the profile's identity and limits)",
    )
    serve.add_argument(
        "--coap",
        type=_endpoint(COAP_PORT),
        default=DEFAULTS.coap,
        metavar="HOST:PORT",
        help="CoAP UDP endpoint (default 127.0.0.1:5683; port 0 picks one; 'off' disables)",
    )
    serve.add_argument(
        "--coap-access",
        choices=[a.value for a in CoapAccess],
        default=None,
        help="rights of CoAP requests (the face has no login): maintenance (default on a loopback bind), "
        "read-only (default on any other bind) or anonymous (the profile's anonymous rights)",
    )
    serve.add_argument(
        "--coap-oscore",
        default=None,
        metavar="PATH",
        help="aiocoap credentials file (JSON) whose OSCORE contexts get maintenance access over CoAP "
        "(needs the oscore extra)",
    )
    serve.add_argument(
        "--lwm2m-server",
        type=_lwm2m_server,
        action="append",
        default=[],
        metavar="coap://HOST:PORT",
        help="register with this LwM2M server from the CoAP socket (repeatable; needs --coap)",
    )
    serve.add_argument(
        "--lwm2m-bootstrap",
        type=_lwm2m_server,
        default=None,
        metavar="coap://HOST:PORT",
        help="bootstrap from this LwM2M bootstrap server, then register with the servers it configures",
    )
    serve.add_argument(
        "--endpoint", default=None, metavar="NAME", help="LwM2M endpoint name (default: the serial number)"
    )
    serve.add_argument(
        "--lifetime",
        type=_lifetime,
        default=None,
        metavar="S",
        help="LwM2M registration lifetime in seconds (default: object 1's, 300)",
    )
    serve.add_argument(
        "--coap-fast-path",
        choices=["on", "off"],
        default=None,
        help="answer plain CoAP requests before aiocoap's pipeline (default on, or the "
        "TAP_EMULATOR_COAP_FAST_PATH environment variable); replies are the same bytes either way",
    )
    serve.add_argument(
        "--tcp",
        type=_endpoint(TAP_TCP_PORT),
        default=DEFAULTS.tcp,
        metavar="HOST:PORT",
        help="Tap frames over TCP, as the SDK speaks to a Wi-Fi Tap (default 127.0.0.1:2000; port 0; 'off')",
    )
    serve.add_argument(
        "--ws",
        type=_endpoint(TAP_WS_PORT),
        default=DEFAULTS.ws,
        metavar="HOST:PORT",
        help="Tap frames over WebSocket, one binary message each (default 127.0.0.1:2001; port 0; 'off')",
    )
    serve.add_argument(
        "--mqtt",
        type=_broker,
        default=None,
        metavar="URL|off",
        help="the IoTize MQTT relay face on this broker (mqtt://HOST[:PORT]); 'off'; default: the "
        "profile's [mqtt] relay setting (off in the default profile), with the device's broker settings",
    )
    serve.add_argument(
        "--trace",
        nargs="?",
        const=True,
        default=False,
        metavar="PATH",
        help="trace every request of every face as JSON lines (time, face, peer, session, path, method, "
        "status, sizes, latency, fault; never secrets) to PATH, or to the log without one",
    )
    serve.add_argument(
        "--faults",
        default=None,
        metavar="PATH.toml",
        help="seeded fault plan applied from the start (drop, delay, duplicate, corrupt, close, offline, "
        "forced status; per face and path); changed live through the control API",
    )
    serve.add_argument(
        "--max-connections",
        type=_positive(int),
        default=LIMITS.max_connections,
        metavar="N",
        help=f"open connections per Tap face (default {DEFAULT_MAX_CONNECTIONS}, "
        "lowered to fit the file limit)",
    )
    serve.add_argument(
        "--max-connections-per-peer",
        type=_positive(int),
        default=LIMITS.max_per_peer,
        metavar="N",
        help=f"open connections per Tap face from one address (default {LIMITS.max_per_peer})",
    )
    serve.add_argument(
        "--frame-timeout",
        type=_positive(float),
        default=LIMITS.frame_timeout,
        metavar="SECONDS",
        help="time a Tap connection has to complete its first frame, or a frame it started "
        f"(default {LIMITS.frame_timeout:g})",
    )
    serve.add_argument(
        "--idle-timeout",
        type=_seconds_or_off,
        default=LIMITS.idle_timeout,
        metavar="SECONDS",
        help="close a Tap connection after this long without a frame "
        f"(default {LIMITS.idle_timeout:g}; 0: never)",
    )
    serve.add_argument(
        "--security",
        choices=[m.value for m in SecurityMode],
        default=None,
        help="override the profile's login mode",
    )
    serve.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="management store the group changes are synced to: sqlite:///PATH, postgresql://... or "
        "'off' (default: management-store.sqlite3 beside the state file; off with --state :memory:)",
    )

    def cloud_options(p: argparse.ArgumentParser, http_default: Endpoint | None) -> None:
        p.add_argument(
            "--http",
            type=_endpoint(HTTP_PORT),
            default=http_default,
            metavar="HOST:PORT",
            help="HTTP endpoint of the emulated cloud: native API and seed faces "
            "(default 127.0.0.1:8080; port 0 picks one; 'off' disables, serve only)",
        )
        p.add_argument(
            "--cloud-config",
            default=None,
            metavar="PATH",
            help="credentials and tenants of the seed faces (default: resources/cloud/default.toml)",
        )

    cloud_options(serve, DEFAULTS.http)
    cloud = commands.add_parser("cloud", help="serve the emulated cloud over a shared management store")
    cloud.add_argument(
        "--store",
        default=f"sqlite:///state/{DEFAULT_STORE_NAME}",
        metavar="URL",
        help=f"management store: sqlite:///PATH or postgresql://... (default sqlite:///state/{DEFAULT_STORE_NAME})",
    )
    cloud_options(cloud, Endpoint("127.0.0.1", HTTP_PORT))
    cloud.add_argument("-v", "--verbose", action="count", default=0, help="more logging (repeat for debug)")
    cloud.add_argument("-q", "--quiet", action="store_true", help="only errors")
    _add_fleet(commands)
    reset = commands.add_parser("reset", help="factory reset: restore the profile's state")
    common(reset)
    add_store_commands(commands, common)
    _add_ctl(commands)
    _add_trace(commands)
    return parser


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a device count is a whole number, 1 or more")
    return int(text)


def _index(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: the first index is a whole number, 0 or more")
    return int(text)


def _host(text: str) -> str:
    """A host to listen on (an IP address or a name this machine resolves), without a port."""
    try:
        endpoint = parse_endpoint(text, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if endpoint is None or endpoint.port != 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a host alone; the ports come from the ranges")
    return endpoint.host


def _port_range(text: str) -> PortRange:
    try:
        return parse_port_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_fleet(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = commands.add_parser(
        "fleet", help="run many devices in one process behind one MQTT broker, in one state file"
    )
    fleet.add_argument("--count", type=_count, required=True, metavar="N", help="devices in this process")
    fleet.add_argument(
        "--first",
        type=_index,
        default=0,
        metavar="K",
        help="index of the first device (default 0): shards of one fleet use disjoint ranges",
    )
    fleet.add_argument(
        "--profile", default="default", help="device profile of every device: a name or a TOML path"
    )
    fleet.add_argument(
        "--serial-format",
        default=DEFAULT_SERIAL_FORMAT,
        metavar="FMT",
        help="Python format of the serial numbers, given the index (default %(default)s)",
    )
    fleet.add_argument(
        "--state",
        default=None,
        metavar="FILE",
        help="state file of the whole fleet (default state/fleet-{first}-{count}.sqlite3; ':memory:')",
    )
    fleet.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="management store every device syncs to: sqlite:///PATH, postgresql://... or 'off' "
        f"(default: {DEFAULT_STORE_NAME} beside the state file; off with --state :memory:)",
    )
    fleet.add_argument(
        "--mqtt",
        type=_broker,
        default=None,
        metavar="URL|off",
        help="the broker every device's relay topics are on (default: the profile's [mqtt] broker)",
    )
    fleet.add_argument(
        "--coap-ports",
        type=_port_range,
        default=None,
        metavar="START-[END]",
        help="a CoAP UDP port for each device, in serial order (off by default)",
    )
    fleet.add_argument(
        "--tcp-ports",
        type=_port_range,
        default=None,
        metavar="START-[END]",
        help="a Tap TCP port for each device, in serial order (off by default)",
    )
    fleet.add_argument(
        "--host",
        type=_host,
        default="127.0.0.1",
        metavar="HOST",
        help="address the per-device ports listen on (default 127.0.0.1)",
    )
    fleet.add_argument(
        "--coap-access",
        choices=[a.value for a in CoapAccess],
        default=None,
        help="rights of CoAP requests on the per-device ports (default as serve's)",
    )
    fleet.add_argument(
        "--security",
        choices=[m.value for m in SecurityMode],
        default=None,
        help="login mode of every device (overrides the profile's and the stored one)",
    )
    fleet.add_argument(
        "--http",
        type=_endpoint(HTTP_PORT),
        default=None,
        metavar="HOST:PORT",
        help="the emulated cloud's HTTP faces over the fleet's store (native API and seed faces, no "
        "control API; default off; port 0 picks one)",
    )
    fleet.add_argument(
        "--cloud-config",
        default=None,
        metavar="PATH",
        help="credentials and tenants of the seed faces (default: resources/cloud/default.toml)",
    )
    fleet.add_argument("-v", "--verbose", action="count", default=0, help="more logging (repeat for debug)")
    fleet.add_argument("-q", "--quiet", action="store_true", help="only errors")


def _add_ctl(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = commands.add_parser("ctl", help="steer a running device through its control API")
    ctl.add_argument(
        "--url",
        default=f"http://127.0.0.1:{HTTP_PORT}",
        help="the device's HTTP endpoint (default %(default)s)",
    )
    ctl.add_argument(
        "--token", default=None, help="bearer token (non-loopback binds; default: $TAP_EMULATOR_TOKEN)"
    )
    ctl.add_argument("-v", "--verbose", action="count", default=0, help=argparse.SUPPRESS)
    ctl.add_argument("-q", "--quiet", action="store_true", help=argparse.SUPPRESS)
    actions = ctl.add_subparsers(dest="ctl_command", required=True, metavar="ACTION")
    for name, text in (
        ("info", "identity, endpoints, sessions, faults, trace and sync backlog"),
        ("state", "every object's readable values (never a secret)"),
        ("reboot", "reboot: sessions end, observers end, the state reloads"),
        ("reset", "factory reset to the profile, live: sessions end, observers and the store are told"),
        ("sessions", "the open Tap sessions"),
        ("lockouts", "peers and accounts with failed logins"),
        ("clear-lockouts", "forget every failed login"),
        ("faults", "the fault plan and what it applied"),
        ("clear-faults", "no faults"),
    ):
        actions.add_parser(name, help=text)
    close = actions.add_parser("close-session", help="close one Tap session's connection")
    close.add_argument("session_id", type=int, metavar="ID")
    set_faults = actions.add_parser("set-faults", help="replace the fault plan with a --faults TOML file")
    set_faults.add_argument("plan", metavar="PATH.toml")
    offline = actions.add_parser("offline", help="nothing answers for SECONDS")
    offline.add_argument("seconds", type=_positive(float), metavar="SECONDS")
    trace = actions.add_parser("trace", help="the last trace events, one JSON line each")
    trace.add_argument("--limit", type=int, default=100, metavar="N")
    variable = actions.add_parser("variable", help="a variable's value (number, hex bytes, layout)")
    variable.add_argument("variable_id", type=int, metavar="ID")
    set_variable = actions.add_parser(
        "set-variable", help="set a variable: VALUE (JSON number, list or text) or --hex BYTES"
    )
    set_variable.add_argument("variable_id", type=int, metavar="ID")
    given = set_variable.add_mutually_exclusive_group(required=True)
    given.add_argument("value", nargs="?", type=_json_value, metavar="VALUE")
    given.add_argument("--hex", dest="hex_bytes", metavar="BYTES")
    memory = actions.add_parser("memory", help="LENGTH bytes of target memory at ADDRESS, as hex")
    memory.add_argument("address", type=_address, metavar="ADDRESS")
    memory.add_argument("length", type=int, metavar="LENGTH")
    write_memory = actions.add_parser("write-memory", help="write hex BYTES to target memory at ADDRESS")
    write_memory.add_argument("address", type=_address, metavar="ADDRESS")
    write_memory.add_argument("hex_bytes", metavar="BYTES")


def _address(text: str) -> int:
    """A target memory address: decimal or 0x hexadecimal."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address: {text!r}") from None


def _json_value(text: str) -> object:
    """A variable value on the command line: JSON (a number or a list), else the text itself."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _add_trace(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = commands.add_parser("trace", help="work with --trace files")
    trace.add_argument("-v", "--verbose", action="count", default=0, help=argparse.SUPPRESS)
    trace.add_argument("-q", "--quiet", action="store_true", help=argparse.SUPPRESS)
    actions = trace.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    replay = actions.add_parser("replay", help="send a trace's CoAP requests again, in order, to a device")
    replay.add_argument("file", metavar="FILE")
    replay.add_argument(
        "--to",
        required=True,
        type=_endpoint(COAP_PORT),
        metavar="HOST:PORT",
        help="the device's CoAP endpoint",
    )


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose < 2:
        # aiocoap warns once per malformed datagram; a flood of junk would flood the log. -vv shows them.
        logging.getLogger("coap-server").setLevel(logging.ERROR)
        # uvicorn warns once per malformed HTTP request ("Invalid HTTP request received."): same reason.
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)


class _Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def _serve(options: ServeOptions) -> int:
    return await _run_until_signal(Emulator(options, announce=lambda line: print(line, flush=True)))


async def _run_until_signal(emulator: _Service) -> int:
    """Start, wait for SIGINT or SIGTERM, stop; a start that fails on an address is exit 1."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await emulator.start()
    except OSError as exc:
        print(f"tap-emulator: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        await stop.wait()
    finally:
        await emulator.stop()
    return 0


def _reset(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    path = args.state or str(default_state_path(profile))
    tree = open_device(profile, path)
    try:
        tree.seed(profile, reset=True)
    finally:
        tree.state.close()
    print(f"reset {profile.device.serial_number} to profile {profile.name} ({path})")
    return 0


def _hex_bytes(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"not hex bytes: {text[:40]!r}") from None


def _ctl(args: argparse.Namespace) -> int:
    """``tap-emulator ctl ACTION``: one control API call, its answer as JSON on stdout."""
    import json
    import os

    from tap_emulator.client import ControlClient, ControlError, Unreachable

    client = ControlClient(args.url, token=args.token or os.environ.get("TAP_EMULATOR_TOKEN"))
    action = args.ctl_command
    calls: dict[str, Callable[[], object]] = {
        "info": client.device,
        "state": client.state,
        "reboot": client.reboot,
        "reset": client.reset,
        "sessions": client.sessions,
        "lockouts": client.lockouts,
        "clear-lockouts": client.clear_lockouts,
        "faults": client.faults,
        "clear-faults": client.clear_faults,
        "close-session": lambda: client.close_session(args.session_id),
        "set-faults": lambda: client.set_faults(args.plan),
        "offline": lambda: client.offline(args.seconds),
        "trace": lambda: client.trace(args.limit),
        "variable": lambda: client.variable(args.variable_id),
        "set-variable": lambda: client.set_variable(args.variable_id, args.value, hex_bytes=args.hex_bytes),
        "memory": lambda: {
            "address": args.address,
            "hex": client.memory(args.address, args.length).hex(),
        },
        "write-memory": lambda: client.write_memory(args.address, _hex_bytes(args.hex_bytes)),
    }
    try:
        result = calls[action]()
    except ControlError as exc:
        print(f"tap-emulator: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.status in (400, 404) else EXIT_RUNTIME  # bad input, unknown id
    except Unreachable as exc:
        print(f"tap-emulator: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except (OSError, ValueError) as exc:  # set-faults: the file; write-memory: the bytes
        print(f"tap-emulator: {getattr(exc, 'filename', None) or ''} {exc}".strip(), file=sys.stderr)
        return EXIT_USAGE
    if action == "trace":
        for event in result:  # type: ignore[attr-defined]
            print(json.dumps(event))
    elif result is None:
        print(f"{action}: done")
    else:
        print(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    _configure_logging(args.verbose, args.quiet)
    try:
        if args.command == "serve":
            options = ServeOptions(
                profile=args.profile,
                tap_config=args.tap_config,
                state=args.state,
                coap=args.coap,
                coap_access=None if args.coap_access is None else CoapAccess(args.coap_access),
                coap_oscore=args.coap_oscore,
                coap_fast_path=None if args.coap_fast_path is None else args.coap_fast_path == "on",
                security=None if args.security is None else SecurityMode(args.security),
                store=args.store,
                tcp=args.tcp,
                ws=args.ws,
                mqtt=args.mqtt,
                trace=args.trace,
                faults=args.faults,
                connections=ConnectionLimits(
                    max_connections=args.max_connections,
                    max_per_peer=args.max_connections_per_peer,
                    frame_timeout=args.frame_timeout,
                    idle_timeout=args.idle_timeout,
                    keepalive=LIMITS.keepalive,
                ),
                http=args.http,
                cloud_config=args.cloud_config,
                lwm2m_servers=tuple(args.lwm2m_server),
                lwm2m_bootstrap=args.lwm2m_bootstrap,
                endpoint=args.endpoint,
                lifetime=args.lifetime,
            )
            if (options.lwm2m_servers or options.lwm2m_bootstrap) and options.coap is None:
                print("tap-emulator: error: LwM2M registration needs the CoAP face (--coap)", file=sys.stderr)
                return 2
            if args.trace is True:
                logging.getLogger(TRACE_LOGGER).setLevel(logging.INFO)
            return asyncio.run(_serve(options))
        if args.command == "cloud":
            if args.http is None:
                print("tap-emulator: cloud needs an --http address", file=sys.stderr)
                return EXIT_USAGE
            cloud = CloudOnly(
                args.store, args.http, args.cloud_config, announce=lambda line: print(line, flush=True)
            )
            return asyncio.run(_run_until_signal(cloud))
        if args.command == "fleet":
            fleet = Fleet(
                FleetOptions(
                    count=args.count,
                    first=args.first,
                    profile=args.profile,
                    serial_format=args.serial_format,
                    state=args.state,
                    store=args.store,
                    mqtt=args.mqtt,
                    coap_ports=args.coap_ports,
                    tcp_ports=args.tcp_ports,
                    host=args.host,
                    coap_access=None if args.coap_access is None else CoapAccess(args.coap_access),
                    security=None if args.security is None else SecurityMode(args.security),
                    http=args.http,
                    cloud_config=args.cloud_config,
                ),
                announce=lambda line: print(line, flush=True),
            )
            return asyncio.run(_run_until_signal(fleet))
        if args.command == "reset":
            return _reset(args)
        if args.command == "store":
            return run_store_command(args, lambda profile: str(default_state_path(load_profile(profile))))
        if args.command == "ctl":
            return _ctl(args)
        if args.command == "trace":
            from tap_emulator.replay import replay_trace

            if args.to is None:
                print("tap-emulator: trace replay needs a --to address", file=sys.stderr)
                return EXIT_USAGE
            return asyncio.run(replay_trace(args.file, args.to))
    except (ConfigError, ModelError) as exc:
        print(f"tap-emulator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StateError, StoreError, CommandError) as exc:
        print(f"tap-emulator: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
    print(f"tap-emulator: unknown command {args.command}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
