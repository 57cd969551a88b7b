"""Adversarial CoAP traffic for memory checks: block1 floods and crowds of observers, on raw sockets.

Shared by the benchmarks (server RSS after each, against its idle RSS) and by the tests that prove the
server's memory stays bounded (tests/faces/coap/test_coap_limits.py). A flood is paced by the server's
own answers (a window of outstanding blocks), so it measures what the server accepts rather than what a
socket buffer drops; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections import Counter
from dataclasses import dataclass, field

from bench.coap_wire import CON, PUT, parse_response, uri_path_options
from tap_emulator.codec.coap import encode_options

OPTION_OBSERVE = 6
OPTION_URI_QUERY = 15
OPTION_BLOCK1 = 27
GET = 0x01
FLOOD_PATH = "/1025/0/0"  # the anonymous group's name: a 16-character field
# Message ids repeat after 65,536 datagrams from one port, and the server would take them as duplicates.
MAX_BLOCKS = 60_000


def _block1_value(number: int, more: bool, szx: int) -> bytes:
    value = number << 4 | (8 if more else 0) | szx
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


@dataclass(slots=True)
class FloodResult:
    sent_bytes: int = 0
    blocks: int = 0
    lost: int = 0
    codes: Counter[str] = field(default_factory=Counter)


def block1_flood(
    address: tuple[str, int],
    total_bytes: int,
    *,
    transfers: int = 4,
    szx: int = 6,
    window: int = 32,
    path: str = FLOOD_PATH,
    timeout: float = 0.5,
) -> FloodResult:
    """Send ``total_bytes`` of block1 PUT blocks to ``path``, spread over ``transfers`` transfers (each
    its own Uri-Query, so the server keys them apart), every block claiming more is to come."""
    block = bytes(16 << szx)
    if total_bytes // len(block) > MAX_BLOCKS:
        raise ValueError(f"at most {MAX_BLOCKS} blocks per flood (one source port, distinct message ids)")
    targets = [[*uri_path_options(path), (OPTION_URI_QUERY, f"flood={i}".encode())] for i in range(transfers)]
    result = FloodResult()
    pending: set[int] = set()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(address)
    sequence = 0
    with contextlib.closing(sock), selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while result.sent_bytes < total_bytes or pending:
            while result.sent_bytes < total_bytes and len(pending) < window:
                transfer, number = sequence % transfers, sequence // transfers
                mid = (sequence & 0xFFFF).to_bytes(2, "big")
                options = encode_options(
                    [*targets[transfer], (OPTION_BLOCK1, _block1_value(number, True, szx))]
                )
                sock.send(bytes([0x40 | CON << 4 | len(mid), PUT]) + mid + mid + options + b"\xff" + block)
                pending.add(sequence & 0xFFFF)
                result.sent_bytes += len(block)
                result.blocks += 1
                sequence += 1
            if not selector.select(timeout):
                result.lost += len(pending)
                pending.clear()
                continue
            while True:
                try:
                    reply = sock.recv(2048)
                except BlockingIOError:
                    break
                parsed = parse_response(reply)
                if parsed is None:
                    continue
                _, code, token = parsed
                if int.from_bytes(token, "big") in pending:
                    pending.discard(int.from_bytes(token, "big"))
                    result.codes[f"{code >> 5}.{code & 0x1F:02d}"] += 1
    return result


class ObserverCrowd:
    """``count`` observations of ``path``, ``per_socket`` per UDP socket (one CoAP endpoint each).

    The sockets stay open, and never acknowledge anything, until ``close``.
    """

    def __init__(self, address: tuple[str, int], count: int, *, per_socket: int = 50, path: str = FLOOD_PATH):
        self.sockets: list[socket.socket] = []
        self.accepted = 0
        self.answered = 0
        options = encode_options([(OPTION_OBSERVE, b""), *uri_path_options(path)])
        try:
            for first in range(0, count, per_socket):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.connect(address)
                sock.settimeout(2.0)
                self.sockets.append(sock)
                batch = range(first, min(count, first + per_socket))
                for index in batch:
                    token = index.to_bytes(4, "big")
                    mid = (index & 0xFFFF).to_bytes(2, "big")
                    sock.send(bytes([0x40 | CON << 4 | len(token), GET]) + mid + token + options)
                for _ in batch:
                    try:
                        reply = sock.recv(2048)
                    except TimeoutError:
                        break
                    self.answered += 1
                    self.accepted += _has_observe(reply)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def _has_observe(reply: bytes) -> bool:
    """True if a response carries an Observe option (the server registered the observation)."""
    if len(reply) < 4:
        return False
    index, number = 4 + (reply[0] & 0x0F), 0
    while index < len(reply) and reply[index] != 0xFF:
        delta, length = reply[index] >> 4, reply[index] & 0x0F
        index += 1
        if delta == 13:
            delta, index = reply[index] + 13, index + 1
        elif delta == 14:
            delta, index = int.from_bytes(reply[index : index + 2], "big") + 269, index + 2
        if length == 13:
            length, index = reply[index] + 13, index + 1
        elif length == 14:
            length, index = int.from_bytes(reply[index : index + 2], "big") + 269, index + 2
        number += delta
        if number == OPTION_OBSERVE:
            return True
        index += length
    return False
