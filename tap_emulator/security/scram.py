"""Password hashing, stored credentials and the server side of the Tap's SCRAM login, without I/O.

The IoTize SDKs do not speak RFC 5802 SCRAM. They hash the password with PBKDF2-SHA1 (the "1-hash"),
salt it with PBKDF2-SHA256, keep every key at 16 bytes, and use truncated HMACs keyed with StoredKey and
ServerKey as proofs (spec tap-protocol.md B.2-B.4). A real SDK only logs in to the emulator if every
byte matches, so this module reproduces that derivation exactly and is checked against the SDK's vectors.

It is sans-IO: no sockets, no clock and no randomness of its own. Salts come from the caller (see
`draw_user_salt`) and nonces are passed in. Every function is a plain synchronous function over
immutable values, so callers may run the heavy ones (`hash_login_password`, `derive_scram_keys`,
`credential_from_password`, `check_plain_login`) in a worker thread; hashlib's PBKDF2 releases the GIL.
A `ScramServerHandshake` object holds one login attempt and is meant to be used by one task at a time.

Secrets (password hashes, keys, proofs, session keys) never appear in reprs or exception messages.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_SCRAM_ITERATIONS",
    "KEY_LENGTH",
    "MAX_LOGIN_PASSWORD_LENGTH",
    "SALT_LENGTH",
    "USERNAME_LENGTH",
    "AuthenticationFailed",
    "Credential",
    "CredentialError",
    "LoginResult",
    "ScramKeys",
    "ScramServerHandshake",
    "check_hash_login",
    "check_plain_login",
    "client_proof",
    "credential_from_key",
    "credential_from_password",
    "derive_scram_keys",
    "draw_user_salt",
    "hash_login_password",
    "salted_password",
    "server_proof",
    "session_key",
]

KEY_LENGTH = 16
"""Length of the 1-hash, SaltedPassword, StoredKey, ServerKey, proofs and session key."""
SALT_LENGTH = 4
USERNAME_LENGTH = 16
"""Login frames carry the username in a 16-byte, zero-padded field."""
MAX_LOGIN_PASSWORD_LENGTH = 16
"""Plain-mode login frames carry the password in a 16-byte field, so longer passwords cannot log in."""
DEFAULT_SCRAM_ITERATIONS = 5000
"""What the SDK's configurator writes to /1024//42 unless told otherwise."""
MAX_ITERATIONS = 0xFFFFFFFF

_PASSWORD_HASH_SALT = b"n0 salt in 1oTi2e"
_PASSWORD_HASH_ITERATIONS = 4096
_KEY_LABEL_ROUNDS = 2
_DISABLED_SALT = bytes(SALT_LENGTH)
_NONCE_LENGTH = 4
_LOGIN_REQUEST_LENGTH = USERNAME_LENGTH + _NONCE_LENGTH

_BLOB_LENGTH_HASH = KEY_LENGTH
_BLOB_LENGTH_SDK = 2 * KEY_LENGTH + SALT_LENGTH
_BLOB_LENGTH_FULL = _BLOB_LENGTH_SDK + 4

_SERIAL_VERSION = 1
_SERIAL_HAS_HASH = 0x01
_SERIAL_HAS_SCRAM = 0x02


class CredentialError(ValueError):
    """A password, key blob or stored credential is malformed. The message never holds secret bytes."""


class AuthenticationFailed(Exception):
    """A login attempt failed.

    Deliberately one exception with one message for every cause (unknown user, wrong proof, login
    disabled by an all-zero salt, malformed request, call out of order) so a face cannot leak which.
    """

    def __init__(self) -> None:
        super().__init__("authentication failed")


# ---------------------------------------------------------------------------------------------------
# Validation helpers (messages name sizes and ranges only, never values)


def _require_length(value: bytes, expected: int, what: str) -> None:
    if len(value) != expected:
        raise CredentialError(f"{what} must be {expected} bytes, got {len(value)}")


def _require_iterations(iterations: int, what: str = "iteration count") -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise CredentialError(f"{what} must be an integer")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise CredentialError(f"{what} must be in 1..{MAX_ITERATIONS}, got {iterations}")


def _require_nonce(nonce: int, what: str) -> None:
    if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 <= nonce <= MAX_ITERATIONS:
        raise ValueError(f"{what} must be an unsigned 32-bit integer")


def _require_login_password(password: str) -> None:
    """Passwords set in clear must fit the 16-byte login field and survive ASCII padding."""
    if len(password) > MAX_LOGIN_PASSWORD_LENGTH:
        raise CredentialError(f"password must be at most {MAX_LOGIN_PASSWORD_LENGTH} characters")
    if not all(" " <= char <= "~" for char in password):
        raise CredentialError("password must be printable ASCII")


# ---------------------------------------------------------------------------------------------------
# Derivation (spec B.2, B.3)


def _hash_password_bytes(password: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha1", password, _PASSWORD_HASH_SALT, _PASSWORD_HASH_ITERATIONS, KEY_LENGTH)


def hash_login_password(password: str) -> bytes:
    """The 16-byte "1-hash" of a password: PBKDF2-HMAC-SHA1 over its UTF-8 bytes, fixed salt, 4096 rounds.

    Any string is accepted (the SDK hashes whatever it is given); only passwords set in clear through
    `credential_from_password` are limited to short printable ASCII.
    """
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:
        raise CredentialError("password is not encodable as UTF-8") from None
    return _hash_password_bytes(encoded)


def salted_password(password_hash: bytes, salt: bytes, iterations: int) -> bytes:
    """SaltedPassword = PBKDF2-HMAC-SHA256(1-hash, UserSalt, It), 16 bytes."""
    _require_length(password_hash, KEY_LENGTH, "password hash")
    _require_length(salt, SALT_LENGTH, "salt")
    _require_iterations(iterations)
    return hashlib.pbkdf2_hmac("sha256", password_hash, salt, iterations, KEY_LENGTH)


def derive_scram_keys(password_hash: bytes, salt: bytes, iterations: int) -> ScramKeys:
    """StoredKey and ServerKey for a 1-hash, salt and iteration count (the SDK's computeBaseKeys)."""
    salted = salted_password(password_hash, salt, iterations)
    stored_key = hashlib.pbkdf2_hmac("sha256", salted, b"ClientKey", _KEY_LABEL_ROUNDS, KEY_LENGTH)
    server_key = hashlib.pbkdf2_hmac("sha256", salted, b"ServerKey", _KEY_LABEL_ROUNDS, KEY_LENGTH)
    return ScramKeys(stored_key=stored_key, server_key=server_key, salt=salt, iterations=iterations)


@dataclass(frozen=True)
class ScramKeys:
    """What the Tap needs to check a SCRAM login and answer it: no password, no SaltedPassword."""

    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    salt: bytes
    iterations: int

    def __post_init__(self) -> None:
        # Freeze bytes-like inputs (bytearray, memoryview) so the value is truly immutable and hashable.
        for name in ("stored_key", "server_key", "salt"):
            object.__setattr__(self, name, bytes(getattr(self, name)))
        _require_length(self.stored_key, KEY_LENGTH, "StoredKey")
        _require_length(self.server_key, KEY_LENGTH, "ServerKey")
        _require_length(self.salt, SALT_LENGTH, "salt")
        _require_iterations(self.iterations)

    @property
    def login_disabled(self) -> bool:
        """An all-zero salt is the SDK's way of saying this user cannot log in."""
        return self.salt == _DISABLED_SALT

    def to_password_key(self) -> bytes:
        """The 36-byte StoredKey | ServerKey | UserSalt that the JavaScript SDK's changePasswordKey sends."""
        return self.stored_key + self.server_key + self.salt

    def to_blob(self) -> bytes:
        """The 40-byte StoredKey | ServerKey | UserSalt | UserIt (big-endian) form."""
        return self.to_password_key() + self.iterations.to_bytes(4, "big")

    @classmethod
    def from_blob(cls, blob: bytes) -> ScramKeys:
        """Inverse of `to_blob`; an iteration count of 0 is refused."""
        _require_length(blob, _BLOB_LENGTH_FULL, "SCRAM key blob")
        return cls._from_password_key(blob[:_BLOB_LENGTH_SDK], int.from_bytes(blob[_BLOB_LENGTH_SDK:], "big"))

    @classmethod
    def _from_password_key(cls, key: bytes, iterations: int) -> ScramKeys:
        return cls(
            stored_key=key[:KEY_LENGTH],
            server_key=key[KEY_LENGTH : 2 * KEY_LENGTH],
            salt=key[2 * KEY_LENGTH :],
            iterations=iterations,
        )

    def with_salt(self, salt: bytes) -> ScramKeys:
        """A low-level write of /1025/{g}/16: the keys stay as they are, so they only match the new salt
        if the writer derived them with it."""
        return ScramKeys(self.stored_key, self.server_key, salt, self.iterations)

    def with_iterations(self, iterations: int) -> ScramKeys:
        """A low-level write of /1025/{g}/7: the keys stay as they are (same caveat as `with_salt`)."""
        return ScramKeys(self.stored_key, self.server_key, self.salt, iterations)


# ---------------------------------------------------------------------------------------------------
# Stored credentials


@dataclass(frozen=True)
class Credential:
    """What a group stores about its password. The plain password is never kept.

    Which form of POST /1025/{g}/2 yields which fields (this is the one place that says so):

    ================================  =====================  ==========================  ===============
    Form received                     password_hash          scram                       Login allowed
    ================================  =====================  ==========================  ===============
    ASCII password (no-security       1-hash of it           derived with a drawn salt   plain, 1-hash,
    mode): `credential_from_password` (16 bytes)             and the current /1024//42   SCRAM
    16-byte 1-hash (1-hash mode)      the 16 bytes           None                        plain, 1-hash
    36 bytes StoredKey|ServerKey|Salt None                   keys, salt, and the current SCRAM
    (JavaScript SDK, SCRAM mode)                             /1024//42 as iteration
    40 bytes ... | UserIt (u32 BE)    None                   keys, salt, its own         SCRAM
                                                             iteration (0 refused)
    ================================  =====================  ==========================  ===============

    Plain login is checked by hashing the received password, so the 1-hash suffices for it. A
    16-byte hash could also be turned into SCRAM keys with `derive_scram_keys` once a salt is chosen;
    the engine does not invent one there, as the 1-hash form is what a 1-hash-mode client sends.
    SCRAM keys cannot give back the 1-hash, so SCRAM-only credentials refuse plain and 1-hash logins.
    When a request does not name the form (a Tap frame), `is_password_key` decides it from the body and
    the device's security mode (/1024//6): in no-security mode a 16-character ASCII password is also 16
    bytes long.
    """

    password_hash: bytes | None = field(default=None, repr=False)
    scram: ScramKeys | None = None

    def __post_init__(self) -> None:
        if self.password_hash is not None:
            object.__setattr__(self, "password_hash", bytes(self.password_hash))
            _require_length(self.password_hash, KEY_LENGTH, "password hash")
        if self.scram is not None and not isinstance(self.scram, ScramKeys):
            raise CredentialError("scram must be ScramKeys or None")

    def to_bytes(self) -> bytes:
        """Stable serialisation: version byte, flags byte, then the 1-hash (16) and/or the 40-byte blob."""
        flags = 0
        body = b""
        if self.password_hash is not None:
            flags |= _SERIAL_HAS_HASH
            body += self.password_hash
        if self.scram is not None:
            flags |= _SERIAL_HAS_SCRAM
            body += self.scram.to_blob()
        return bytes([_SERIAL_VERSION, flags]) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> Credential:
        """Inverse of `to_bytes`; anything else raises CredentialError."""
        if len(data) < 2:
            raise CredentialError("stored credential is truncated")
        version, flags = data[0], data[1]
        if version != _SERIAL_VERSION:
            raise CredentialError(f"unsupported stored credential version {version}")
        if flags & ~(_SERIAL_HAS_HASH | _SERIAL_HAS_SCRAM):
            raise CredentialError(f"unknown stored credential flags 0x{flags:02x}")
        has_hash = bool(flags & _SERIAL_HAS_HASH)
        has_scram = bool(flags & _SERIAL_HAS_SCRAM)
        expected = 2 + KEY_LENGTH * has_hash + _BLOB_LENGTH_FULL * has_scram
        _require_length(data, expected, "stored credential")
        body = data[2:]
        password_hash = body[:KEY_LENGTH] if has_hash else None
        scram = ScramKeys.from_blob(body[KEY_LENGTH * has_hash :]) if has_scram else None
        return cls(password_hash=password_hash, scram=scram)


def is_password_key(body: bytes, *, longest_password: int, plain_mode: bool) -> bool:
    """Whether a password body whose form the request does not name (a Tap frame) is a key of the table
    above rather than an ASCII password: longer than a password (36 or 40 bytes), a key; exactly the
    hash length (16), a 1-hash, unless the device is in no-security mode (``plain_mode``) and the bytes
    are printable, where it is a 16-character password (the SDK sends plain passwords unpadded);
    anything shorter is a password when printable, else a key (refused for its length)."""
    if len(body) > longest_password:
        return True
    printable = all(0x20 <= byte <= 0x7E for byte in body)
    if len(body) == KEY_LENGTH:
        return not (plain_mode and printable)
    return not printable


def credential_from_password(password: str, salt: bytes, iterations: int) -> Credential:
    """Credential for a password set in clear (printable ASCII, at most 16 characters).

    `salt` should come from `draw_user_salt` and `iterations` from /1024//42. Heavy: two PBKDF2 runs.
    """
    _require_login_password(password)
    _require_length(salt, SALT_LENGTH, "salt")
    _require_iterations(iterations)
    password_hash = hash_login_password(password)
    return Credential(password_hash=password_hash, scram=derive_scram_keys(password_hash, salt, iterations))


def credential_from_key(blob: bytes, current_iterations: int) -> Credential:
    """Credential for a 16-, 36- or 40-byte password key; see `Credential` for what each form keeps.

    `current_iterations` (/1024//42) is only used, and only checked, for the 36-byte form.
    """
    blob = bytes(blob)
    if len(blob) == _BLOB_LENGTH_HASH:
        return Credential(password_hash=blob)
    if len(blob) == _BLOB_LENGTH_SDK:
        _require_iterations(current_iterations, "current iteration count")
        return Credential(scram=ScramKeys._from_password_key(blob, current_iterations))
    if len(blob) == _BLOB_LENGTH_FULL:
        return Credential(scram=ScramKeys.from_blob(blob))
    raise CredentialError(
        f"password key must be {_BLOB_LENGTH_HASH}, {_BLOB_LENGTH_SDK} or {_BLOB_LENGTH_FULL} bytes,"
        f" got {len(blob)}"
    )


def draw_user_salt(random_bytes: Callable[[int], bytes]) -> bytes:
    """A 4-byte user salt whose first byte is non-zero (an all-zero salt would disable login).

    Like the SDK's generator, a drawn zero first byte is replaced (here by 0x01) rather than redrawn, so
    a faulty source cannot loop forever.
    """
    drawn = bytes(random_bytes(SALT_LENGTH))
    if len(drawn) != SALT_LENGTH:
        raise ValueError(f"random source returned {len(drawn)} bytes, expected {SALT_LENGTH}")
    return bytes([drawn[0] or 1]) + drawn[1:]


SeedCredentials = Callable[[str, int], Credential]
"""(password, iterations) -> the credential a factory-fresh group holds for that password."""


class SharedSeedCredentials:
    """Factory credentials shared by every device seeded from one profile (a fleet).

    A fleet of 10,000 devices seeded one derivation per group each would run 30,000 pairs of PBKDF2
    (minutes of CPU). Instead one salt is drawn and one derivation runs per (password, iterations), and
    every device starts with that credential: the same salt and keys, as devices flashed from one image.
    A password changed later derives with a salt of its own device. Not thread-safe (the event loop's).
    """

    def __init__(self, random_bytes: Callable[[int], bytes]) -> None:
        self._random_bytes = random_bytes
        self._derived: dict[tuple[str, int], Credential] = {}

    def __call__(self, password: str, iterations: int) -> Credential:
        key = (password, iterations)
        credential = self._derived.get(key)
        if credential is None:
            credential = credential_from_password(password, draw_user_salt(self._random_bytes), iterations)
            self._derived[key] = credential
        return credential

    def __len__(self) -> int:
        """Derivations run so far."""
        return len(self._derived)


# ---------------------------------------------------------------------------------------------------
# Plain and 1-hash logins (POST /1024//0: username(16) | password field(16))

# Compared against when a group has no 1-hash, so a miss costs the same as a wrong password.
_ABSENT_HASH = bytes(KEY_LENGTH)


def _stored_hash(credential: Credential | None) -> tuple[bytes, bool]:
    if credential is None or credential.password_hash is None:
        return _ABSENT_HASH, False
    return credential.password_hash, True


def check_plain_login(credential: Credential | None, password_field: bytes) -> bool:
    """Check a no-security-mode login: the field is the ASCII password, zero-padded to 16 bytes.

    The received password is always hashed, even for an unknown group, so timing does not tell a
    missing group from a wrong password. Heavy (one PBKDF2-SHA1 run).
    """
    if len(password_field) != MAX_LOGIN_PASSWORD_LENGTH:
        return False
    # The password is the PBKDF2 key, and HMAC zero-pads keys shorter than its block: the padded field
    # hashes exactly like the bare password, so the padding needs no stripping.
    candidate = _hash_password_bytes(bytes(password_field))
    stored, present = _stored_hash(credential)
    return hmac.compare_digest(candidate, stored) and present


def check_hash_login(credential: Credential | None, hash_field: bytes) -> bool:
    """Check a 1-hash-mode login: the field is the 16-byte 1-hash. Constant time."""
    if len(hash_field) != KEY_LENGTH:
        return False
    stored, present = _stored_hash(credential)
    return hmac.compare_digest(bytes(hash_field), stored) and present


# ---------------------------------------------------------------------------------------------------
# Proofs and session key (spec B.3). Nonces are unsigned 32-bit, big-endian on the wire.


def _nonce_bytes(nonce: int, what: str) -> bytes:
    _require_nonce(nonce, what)
    return nonce.to_bytes(_NONCE_LENGTH, "big")


def _truncated_hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")[:KEY_LENGTH]


def client_proof(keys: ScramKeys, client_nonce: int, server_nonce: int) -> bytes:
    """HMAC-SHA256(StoredKey, cn | StoredKey | sn), first 16 bytes."""
    cn = _nonce_bytes(client_nonce, "client nonce")
    sn = _nonce_bytes(server_nonce, "server nonce")
    return _truncated_hmac(keys.stored_key, cn + keys.stored_key + sn)


def server_proof(keys: ScramKeys, client_nonce: int, server_nonce: int) -> bytes:
    """HMAC-SHA256(ServerKey, sn | ServerKey | cn), first 16 bytes: note the swapped nonce order."""
    cn = _nonce_bytes(client_nonce, "client nonce")
    sn = _nonce_bytes(server_nonce, "server nonce")
    return _truncated_hmac(keys.server_key, sn + keys.server_key + cn)


def session_key(keys: ScramKeys, client_nonce: int, server_nonce: int) -> bytes:
    """HMAC-SHA256(ServerKey, cn | ServerKey | UserSalt | StoredKey | sn), first 16 bytes."""
    cn = _nonce_bytes(client_nonce, "client nonce")
    sn = _nonce_bytes(server_nonce, "server nonce")
    return _truncated_hmac(keys.server_key, cn + keys.server_key + keys.salt + keys.stored_key + sn)


# `ScramServerHandshake.finish` takes a parameter named like the public function.
_expected_client_proof = client_proof


# ---------------------------------------------------------------------------------------------------
# Server side of the SCRAM handshake (spec B.4)


@dataclass(frozen=True)
class LoginResult:
    """A successful SCRAM login: the group logged into, what to answer, and the new session key."""

    group_id: int
    server_proof: bytes = field(repr=False)
    session_key: bytes = field(repr=False)
    username: str = ""


class _Stage(enum.Enum):
    AWAITING_REQUEST = enum.auto()
    AWAITING_PROOF = enum.auto()
    CLOSED = enum.auto()


@dataclass(frozen=True)
class _Attempt:
    username: str
    group_id: int | None  # None: unknown or disabled user, answered with decoy parameters
    keys: ScramKeys = field(repr=False)
    client_nonce: int
    server_nonce: int


def login_name(field_bytes: bytes) -> str:
    """The name a 16-byte login field carries, exactly: the SDK zero-pads it, so the name ends at the
    first zero byte, and only zero bytes may follow. A field with anything after its padding starts
    is returned whole, zero bytes included: no group name (printable ASCII) can equal it, so it logs
    in to nobody. Case and spaces are kept as sent; an empty name is no login either (see the tree).
    """
    name, _, padding = field_bytes.partition(b"\0")
    return (name if not padding.strip(b"\0") else field_bytes).decode("latin-1")


class ScramServerHandshake:
    """One login attempt, server side. Sans-IO: the caller supplies the server nonce and the lookup.

    `start` answers GET /1024//40 and `finish` answers GET /1024//41. Each may be called once, in that
    order; anything else, and any failure, raises `AuthenticationFailed` and closes the attempt.

    An unknown user, or one whose salt is all zero (login disabled), is answered at step 1 with a salt
    and iteration that look real: the salt is derived from `decoy_key` and the username (stable across
    attempts, like a real one) and the iteration is `decoy_iterations` (pass the current /1024//42 so
    it matches freshly keyed users). Step 2 then does the same work as for a real user and fails.

    The keys returned by `lookup` at step 1 are used for step 2 even if the password changes between.
    """

    def __init__(
        self,
        lookup: Callable[[str], tuple[int, ScramKeys] | None],
        decoy_key: bytes,
        *,
        decoy_iterations: int = DEFAULT_SCRAM_ITERATIONS,
    ) -> None:
        if len(decoy_key) < KEY_LENGTH:
            raise ValueError(f"decoy key must be at least {KEY_LENGTH} bytes")
        _require_iterations(decoy_iterations, "decoy iteration count")
        self._lookup = lookup
        self._decoy_key = bytes(decoy_key)
        self._decoy_iterations = decoy_iterations
        self._stage = _Stage.AWAITING_REQUEST
        self._attempt: _Attempt | None = None

    def _decoy_keys(self, username: str) -> ScramKeys:
        name = username.encode("latin-1")
        salt_source = hmac.digest(self._decoy_key, b"decoy salt\0" + name, "sha256")
        key_source = hmac.digest(self._decoy_key, b"decoy keys\0" + name, "sha256")
        return ScramKeys(
            stored_key=key_source[:KEY_LENGTH],
            server_key=key_source[KEY_LENGTH : 2 * KEY_LENGTH],
            salt=bytes([salt_source[0] or 1]) + salt_source[1:SALT_LENGTH],
            iterations=self._decoy_iterations,
        )

    def start(self, request: bytes, server_nonce: int) -> bytes:
        """Take username(16) | client nonce (u32 BE); return server nonce | salt | iteration (12 bytes)."""
        _require_nonce(server_nonce, "server nonce")
        if self._stage is not _Stage.AWAITING_REQUEST:
            self._close()
            raise AuthenticationFailed()
        self._stage = _Stage.CLOSED
        if len(request) != _LOGIN_REQUEST_LENGTH:
            raise AuthenticationFailed()
        username = login_name(bytes(request[:USERNAME_LENGTH]))
        client_nonce = int.from_bytes(request[USERNAME_LENGTH:], "big")

        found = self._lookup(username)
        group_id: int | None
        if found is None or found[1].login_disabled:
            group_id, keys = None, self._decoy_keys(username)
        else:
            group_id, keys = found
        self._attempt = _Attempt(username, group_id, keys, client_nonce, server_nonce)
        self._stage = _Stage.AWAITING_PROOF
        return _nonce_bytes(server_nonce, "server nonce") + keys.salt + keys.iterations.to_bytes(4, "big")

    def finish(self, client_proof: bytes) -> LoginResult:
        """Check the 16-byte client proof in constant time; return the server proof and session key."""
        attempt = self._attempt
        if self._stage is not _Stage.AWAITING_PROOF or attempt is None:
            self._close()
            raise AuthenticationFailed()
        self._close()
        keys, cn, sn = attempt.keys, attempt.client_nonce, attempt.server_nonce
        expected = _expected_client_proof(keys, cn, sn)
        proof_matches = hmac.compare_digest(expected, bytes(client_proof))
        if not proof_matches or attempt.group_id is None:
            raise AuthenticationFailed()
        return LoginResult(
            group_id=attempt.group_id,
            server_proof=server_proof(keys, cn, sn),
            session_key=session_key(keys, cn, sn),
            username=attempt.username,
        )

    def _close(self) -> None:
        self._stage = _Stage.CLOSED
        self._attempt = None
