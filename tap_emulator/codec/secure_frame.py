"""Sans-IO codec for the Tap's encrypted channel (spec B.5), used after a SCRAM login.

The SDK tunnels each request through ``GET /1024//48``: the inner request is wrapped as
``counter u16be | len u16be | payload | zero padding | CRC-32/MPEG-2 u32be`` (a whole number of AES
blocks) and encrypted with AES-128-CBC, no padding, the IV reset for every frame. The Tap answers with
an APDU response (``status | data | 90 00``) wrapped and encrypted the same way.

This module only transforms bytes: the Tap face owns sockets and sessions, the tree answers
``/1024//45``, and key or IV generation (randomness) happens elsewhere. Errors raise `SecureFrameError`;
key material never appears in a message or a repr.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "BLOCK_SIZE",
    "KEY_SIZE",
    "ZERO_IV",
    "FrameCipher",
    "SecureChannel",
    "SecureFrameError",
    "crc32_mpeg2",
    "decrypt_frame",
    "encrypt_frame",
    "unwrap",
    "wrap",
]

BLOCK_SIZE: Final = 16
KEY_SIZE: Final = 16  # AES-128
ZERO_IV: Final = bytes(BLOCK_SIZE)
_ENVELOPE_SIZE: Final = 8  # counter, length, CRC
_PREFIX: Final = struct.Struct(">HH")
_ZERO_PADDING: Final = bytes(BLOCK_SIZE - 1)


class SecureFrameError(ValueError):
    """An encrypted frame refused: not block aligned, bad length, bad CRC or a counter not increasing."""


# CRC-32/MPEG-2 is the unreflected twin of zlib's CRC-32 (same polynomial). Reflecting every input
# byte and the 32-bit result through this table lets zlib's C loop do the work.
_BIT_REVERSED: Final = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def _crc_field(data: bytes) -> bytes:
    """CRC-32/MPEG-2 of ``data`` as the frame carries it (u32 big-endian)."""
    reflected = zlib.crc32(data.translate(_BIT_REVERSED)) ^ 0xFFFFFFFF  # undo zlib's final xor-out
    return reflected.to_bytes(4, "little").translate(_BIT_REVERSED)


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 (poly 0x04C11DB7, init 0xFFFFFFFF, unreflected, no xor-out) of ``data``."""
    return int.from_bytes(_crc_field(data), "big")


def _padded_size(payload_length: int) -> int:
    return (payload_length + _ENVELOPE_SIZE + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE


def wrap(counter: int, payload: bytes) -> bytes:
    """``counter u16be | len u16be | payload | zero pad | crc u32be``, a multiple of 16 bytes long.

    The padding is the least that makes the total block aligned (0 to 15 bytes).
    """
    if not 0 <= counter <= 0xFFFF:
        raise ValueError("frame counter must fit in 16 bits")
    if len(payload) > 0xFFFF:
        raise ValueError("payload longer than 65535 bytes")
    padding = _padded_size(len(payload)) - _ENVELOPE_SIZE - len(payload)
    body = _PREFIX.pack(counter, len(payload)) + payload + _ZERO_PADDING[:padding]
    return body + _crc_field(body)


def unwrap(plaintext: bytes) -> tuple[int, bytes]:
    """Check a wrapped frame and return (counter, payload).

    The length field must account for the whole frame with the least padding, and the CRC must match
    every byte before it. The padding bytes are covered by the CRC but not required to be zero.
    """
    size = len(plaintext)
    if size < BLOCK_SIZE or size % BLOCK_SIZE:
        raise SecureFrameError(f"frame of {size} bytes is not a whole number of AES blocks")
    counter, length = _PREFIX.unpack_from(plaintext)
    if _padded_size(length) != size:
        raise SecureFrameError(f"length field {length} does not match a {size}-byte frame")
    if plaintext[-4:] != _crc_field(plaintext[:-4]):
        raise SecureFrameError("CRC mismatch")
    return counter, bytes(plaintext[4 : 4 + length])


def _check_key(session_key: bytes) -> None:
    if len(session_key) != KEY_SIZE:
        raise ValueError(f"session key must be {KEY_SIZE} bytes")


def _check_iv(iv: bytes) -> None:
    if len(iv) != BLOCK_SIZE:
        raise ValueError(f"IV must be {BLOCK_SIZE} bytes")


def _run(cipher: Cipher[modes.CBC], data: bytes, *, encrypt: bool) -> bytes:
    context = cipher.encryptor() if encrypt else cipher.decryptor()
    return context.update(data) + context.finalize()


class FrameCipher:
    """AES-128-CBC under one session key with the IV reset for every frame, for either side of a channel.

    Building an OpenSSL context costs more than encrypting a short frame, so this keeps one encrypting
    and one decrypting CBC context for the life of the key and steers their chaining instead:

    - a CBC decryptor chains from the last ciphertext block it was given, so feeding it the IV as one
      extra block first (its output dropped) decrypts the frame exactly as a fresh context at that IV;
    - a CBC encryptor chains from the last block it produced, so XOR-ing ``IV ^ that block`` into the
      first plaintext block gives exactly the ciphertext of a fresh context at the IV.

    Not thread-safe: one per session, as a session handles one frame at a time.
    """

    __slots__ = ("_decryptor", "_encrypt_chain", "_encryptor")

    def __init__(self, session_key: bytes) -> None:
        _check_key(session_key)
        cipher = Cipher(algorithms.AES(session_key), modes.CBC(ZERO_IV))
        self._encryptor = cipher.encryptor()
        self._decryptor = cipher.decryptor()
        # The last ciphertext block the encryptor produced, as an int (it starts at ZERO_IV).
        self._encrypt_chain = 0

    def __repr__(self) -> str:
        return "FrameCipher()"

    def encrypt_blocks(self, iv: bytes, plaintext: bytes) -> bytes:
        """CBC-encrypt whole blocks from ``iv``."""
        _check_iv(iv)
        _check_aligned(plaintext)
        mask = int.from_bytes(iv, "big") ^ self._encrypt_chain
        if mask:
            head = (int.from_bytes(plaintext[:BLOCK_SIZE], "big") ^ mask).to_bytes(BLOCK_SIZE, "big")
            plaintext = head + plaintext[BLOCK_SIZE:]
        ciphertext = self._encryptor.update(plaintext)
        self._encrypt_chain = int.from_bytes(ciphertext[-BLOCK_SIZE:], "big")
        return ciphertext

    def decrypt_blocks(self, iv: bytes, ciphertext: bytes) -> bytes:
        """CBC-decrypt whole blocks from ``iv``."""
        _check_iv(iv)
        _check_aligned(ciphertext)
        return self._decryptor.update(iv + ciphertext)[BLOCK_SIZE:]

    def encrypt_frame(self, iv: bytes, counter: int, payload: bytes) -> bytes:
        """Same bytes as the module's `encrypt_frame` with this key."""
        return self.encrypt_blocks(iv, wrap(counter, payload))

    def decrypt_frame(self, iv: bytes, ciphertext: bytes) -> tuple[int, bytes]:
        """Same result as the module's `decrypt_frame` with this key."""
        return unwrap(self.decrypt_blocks(iv, ciphertext))


def _check_aligned(ciphertext: bytes) -> None:
    if not ciphertext or len(ciphertext) % BLOCK_SIZE:
        raise SecureFrameError(f"ciphertext of {len(ciphertext)} bytes is not a whole number of AES blocks")


def encrypt_frame(session_key: bytes, iv: bytes, counter: int, payload: bytes) -> bytes:
    """Wrap and encrypt one frame, as the SDK does for a request (tests and benchmarks play the SDK)."""
    _check_key(session_key)
    _check_iv(iv)
    return _run(Cipher(algorithms.AES(session_key), modes.CBC(iv)), wrap(counter, payload), encrypt=True)


def decrypt_frame(session_key: bytes, iv: bytes, ciphertext: bytes) -> tuple[int, bytes]:
    """Decrypt and unwrap one frame into (counter, payload), as the SDK does for a response."""
    _check_key(session_key)
    _check_iv(iv)
    _check_aligned(ciphertext)
    return unwrap(_run(Cipher(algorithms.AES(session_key), modes.CBC(iv)), ciphertext, encrypt=False))


class SecureChannel:
    """Server side of the encrypted channel for one session (key + IVs + counter check).

    Counter rule: a request is refused unless its counter is greater than the last accepted one. The
    first request after a new key may carry any counter (the JS SDK starts at 0, the Swift SDK at 1);
    a new key means a new channel. The counter is a u16, so a session ends after counter 0xFFFF: the
    client has to log in again. A refused request changes nothing.

    Responses carry the counter of the request they answer (the SDK does not check it; the vector uses
    the request's counter).

    IV switch (``/1024//45``): `set_ivs` stages the new IVs, and they take effect when the next request
    is opened. So the ``/1024//45`` response is sealed with the old IVs whether the caller stages the new
    IVs before or after sealing it, and the following request is decrypted with the client's new IV.
    Because old ciphertexts no longer decrypt to a valid frame under the new IV, the counter check
    restarts there too: the first request under new IVs may carry any counter, in case a client resets
    its counter with its IVs.
    """

    __slots__ = (
        "_cipher",
        "_frames",
        "_last_counter",
        "_request_iv",
        "_response_iv",
        "_staged_ivs",
    )

    def __init__(self, session_key: bytes) -> None:
        self._cipher = FrameCipher(session_key)
        self._request_iv = ZERO_IV
        self._response_iv = ZERO_IV
        self._staged_ivs: tuple[bytes, bytes] | None = None
        self._last_counter: int | None = None
        self._frames = 0

    @property
    def frames(self) -> int:
        """Number of requests opened successfully since the session key was set."""
        return self._frames

    def __repr__(self) -> str:
        return f"SecureChannel(frames={self._frames}, last_counter={self._last_counter})"

    def open_request(self, ciphertext: bytes) -> bytes:
        """Decrypt and check one ``/1024//48`` payload; return the inner request bytes."""
        _check_aligned(ciphertext)
        if self._staged_ivs is not None:
            self._request_iv, self._response_iv = self._staged_ivs
            self._staged_ivs = None
            self._last_counter = None
        return self._open(self._request_iv, ciphertext)

    def _open(self, iv: bytes, ciphertext: bytes) -> bytes:
        counter, inner = unwrap(self._cipher.decrypt_blocks(iv, ciphertext))
        last = self._last_counter
        if last is not None and counter <= last:
            raise SecureFrameError(f"frame counter {counter} does not increase past {last}")
        self._last_counter = counter
        self._frames += 1
        return inner

    def seal_response(self, apdu_response: bytes) -> bytes:
        """Wrap an APDU response with the counter of the last opened request and encrypt it.

        Raises RuntimeError if no request has been opened under the current IVs: there is nothing to
        answer, and a failed request is answered in clear by the caller.
        """
        counter = self._last_counter
        if counter is None:
            raise RuntimeError("no opened request to answer")
        return self._cipher.encrypt_blocks(self._response_iv, wrap(counter, apdu_response))

    def open_request_at(self, iv: bytes, ciphertext: bytes) -> bytes:
        """`open_request` with a one-off client IV (``/1024//44``, send with IV): the IVs in use and any
        staged ones stay as they are; the counter must still increase."""
        _check_iv(iv)
        _check_aligned(ciphertext)
        return self._open(iv, ciphertext)

    def seal_response_at(self, iv: bytes, apdu_response: bytes) -> bytes:
        """`seal_response` under a one-off Tap IV (the answer to ``/1024//44``)."""
        _check_iv(iv)
        counter = self._last_counter
        if counter is None:
            raise RuntimeError("no opened request to answer")
        return self._cipher.encrypt_blocks(iv, wrap(counter, apdu_response))

    def set_ivs(self, iv_encode: bytes, iv_decode: bytes) -> None:
        """Stage new IVs, named from the client's side as in the SDK, to take effect at the next request.

        ``iv_encode`` is the client's IV (it encrypts requests, so the Tap decrypts them with it);
        ``iv_decode`` is the Tap's IV (the Tap encrypts responses with it). See the class docstring.
        """
        _check_iv(iv_encode)
        _check_iv(iv_decode)
        self._staged_ivs = (bytes(iv_encode), bytes(iv_decode))
