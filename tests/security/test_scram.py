"""Tests for the SCRAM engine: SDK vectors, credential forms, plain/1-hash checks and the handshake.

scram_vectors.json is a verbatim copy of the spec's vectors/scram.json (cross-checked against the SDK).
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tap_emulator.security import (
    DEFAULT_SCRAM_ITERATIONS,
    AuthenticationFailed,
    Credential,
    CredentialError,
    LoginResult,
    ScramKeys,
    ScramServerHandshake,
    check_hash_login,
    check_plain_login,
    client_proof,
    credential_from_key,
    credential_from_password,
    derive_scram_keys,
    draw_user_salt,
    hash_login_password,
    login_name,
    salted_password,
    server_proof,
    session_key,
)

pytestmark = pytest.mark.timeout(30)

VECTORS: list[dict[str, Any]] = json.loads((Path(__file__).parent / "scram_vectors.json").read_text())
VECTOR_IDS = [repr(vector["input"]["password"]) for vector in VECTORS]

DECOY_KEY = bytes(range(32))
U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
LOGIN_PASSWORDS = st.text(alphabet=string.printable[:95], max_size=16)  # printable ASCII, space..~
USER_SALTS = st.binary(min_size=4, max_size=4).filter(lambda salt: salt[0] != 0)
SMALL_ITERATIONS = st.integers(min_value=1, max_value=64)
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)


def vector_keys(vector: dict[str, Any]) -> ScramKeys:
    output = vector["output"]
    return ScramKeys(
        stored_key=bytes.fromhex(output["storedKey"]),
        server_key=bytes.fromhex(output["serverKey"]),
        salt=bytes.fromhex(vector["input"]["salt"]),
        iterations=vector["input"]["iterations"],
    )


def padded(text: str | bytes, length: int = 16) -> bytes:
    raw = text.encode("ascii") if isinstance(text, str) else text
    return raw.ljust(length, b"\0")


def login_request(username: str, client_nonce: int) -> bytes:
    return padded(username) + client_nonce.to_bytes(4, "big")


def directory(
    entries: dict[str, tuple[int, ScramKeys]], seen: list[str] | None = None
) -> Callable[[str], tuple[int, ScramKeys] | None]:
    def lookup(username: str) -> tuple[int, ScramKeys] | None:
        if seen is not None:
            seen.append(username)
        return entries.get(username)

    return lookup


def parse_login_response(response: bytes) -> tuple[int, bytes, int]:
    assert len(response) == 12
    return int.from_bytes(response[:4], "big"), response[4:8], int.from_bytes(response[8:], "big")


def sdk_login(
    handshake: ScramServerHandshake, username: str, password: str, client_nonce: int, server_nonce: int
) -> tuple[ScramKeys, LoginResult]:
    """Play the SDK: send step 1, derive from the password with what the server returned, send step 2."""
    response = handshake.start(login_request(username, client_nonce), server_nonce)
    echoed_nonce, salt, iterations = parse_login_response(response)
    assert echoed_nonce == server_nonce
    keys = derive_scram_keys(hash_login_password(password), salt, iterations)
    return keys, handshake.finish(client_proof(keys, client_nonce, server_nonce))


# ---------------------------------------------------------------------------------------------------
# SDK vectors


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_vector_derivation(vector: dict[str, Any]) -> None:
    given_, expected = vector["input"], vector["output"]
    salt = bytes.fromhex(given_["salt"])
    password_hash = hash_login_password(given_["password"])
    assert password_hash.hex() == expected["hashedPassword"]
    assert salted_password(password_hash, salt, given_["iterations"]).hex() == expected["saltedPassword"]
    keys = derive_scram_keys(password_hash, salt, given_["iterations"])
    assert keys.stored_key.hex() == expected["storedKey"]
    assert keys.server_key.hex() == expected["serverKey"]
    assert keys.to_password_key().hex() == expected["passwordKey36"]
    assert keys.to_blob() == bytes.fromhex(expected["passwordKey36"]) + given_["iterations"].to_bytes(
        4, "big"
    )


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_vector_proofs_and_session_key(vector: dict[str, Any]) -> None:
    keys, cn, sn = vector_keys(vector), vector["input"]["clientNonce"], vector["input"]["serverNonce"]
    assert client_proof(keys, cn, sn).hex() == vector["output"]["clientProof"]
    assert server_proof(keys, cn, sn).hex() == vector["output"]["serverProof"]
    assert session_key(keys, cn, sn).hex() == vector["output"]["sessionKey"]


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_vector_handshake_from_sdk_key(vector: dict[str, Any]) -> None:
    """The server, given only the 36-byte key the JS SDK uploads, answers the SDK's proof exactly."""
    given_, expected = vector["input"], vector["output"]
    credential = credential_from_key(bytes.fromhex(expected["passwordKey36"]), given_["iterations"])
    assert credential.scram is not None
    handshake = ScramServerHandshake(directory({"user": (7, credential.scram)}), DECOY_KEY)

    response = handshake.start(login_request("user", given_["clientNonce"]), given_["serverNonce"])
    assert response == (
        given_["serverNonce"].to_bytes(4, "big")
        + bytes.fromhex(given_["salt"])
        + given_["iterations"].to_bytes(4, "big")
    )
    result = handshake.finish(bytes.fromhex(expected["clientProof"]))
    assert result.group_id == 7
    assert result.username == "user"
    assert result.server_proof.hex() == expected["serverProof"]
    assert result.session_key.hex() == expected["sessionKey"]


def test_non_ascii_password_hash_uses_utf8() -> None:
    """Vector 3 only matches the SDK if the password is hashed as UTF-8 (Latin-1 gives another hash)."""
    assert (
        hash_login_password("pässwörd-longer-than-16-chars").hex() == VECTORS[3]["output"]["hashedPassword"]
    )


def test_unencodable_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(CredentialError) as caught:
        hash_login_password("abc\ud800")
    assert "abc" not in str(caught.value)


async def test_derivation_is_safe_in_worker_threads() -> None:
    """Faces run derivations off the event loop, several at once; each must give its own vector."""

    def derive(vector: dict[str, Any]) -> bytes:
        given_ = vector["input"]
        password_hash = hash_login_password(given_["password"])
        return derive_scram_keys(
            password_hash, bytes.fromhex(given_["salt"]), given_["iterations"]
        ).to_password_key()

    results = await asyncio.wait_for(
        asyncio.gather(*(asyncio.to_thread(derive, vector) for vector in VECTORS * 3)), timeout=20
    )
    assert [result.hex() for result in results] == [v["output"]["passwordKey36"] for v in VECTORS * 3]


# ---------------------------------------------------------------------------------------------------
# ScramKeys


def test_scram_keys_validate_sizes_and_iterations() -> None:
    keys = vector_keys(VECTORS[0])
    with pytest.raises(CredentialError):
        ScramKeys(keys.stored_key[:15], keys.server_key, keys.salt, 5000)
    with pytest.raises(CredentialError):
        ScramKeys(keys.stored_key, keys.server_key + b"\0", keys.salt, 5000)
    with pytest.raises(CredentialError):
        ScramKeys(keys.stored_key, keys.server_key, b"\1\2\3", 5000)
    for bad_iterations in (0, -1, 2**32):
        with pytest.raises(CredentialError):
            ScramKeys(keys.stored_key, keys.server_key, keys.salt, bad_iterations)
    assert ScramKeys(keys.stored_key, keys.server_key, keys.salt, 2**32 - 1).iterations == 2**32 - 1


def test_scram_keys_low_level_writes_keep_the_keys() -> None:
    keys = vector_keys(VECTORS[0])
    resalted = keys.with_salt(b"\x09\x08\x07\x06")
    assert (resalted.stored_key, resalted.server_key) == (keys.stored_key, keys.server_key)
    assert (resalted.salt, resalted.iterations) == (b"\x09\x08\x07\x06", keys.iterations)
    reiterated = keys.with_iterations(1234)
    assert (reiterated.stored_key, reiterated.server_key) == (keys.stored_key, keys.server_key)
    assert (reiterated.salt, reiterated.iterations) == (keys.salt, 1234)
    with pytest.raises(CredentialError):
        keys.with_salt(b"\1\2")
    with pytest.raises(CredentialError):
        keys.with_iterations(0)


def test_scram_keys_freeze_bytes_like_inputs() -> None:
    keys = vector_keys(VECTORS[0])
    mutable = bytearray(keys.stored_key)
    copied = ScramKeys(mutable, keys.server_key, bytearray(keys.salt), keys.iterations)  # type: ignore[arg-type]
    mutable[0] ^= 0xFF
    assert copied == keys
    assert hash(copied) == hash(keys)


def test_all_zero_salt_means_login_disabled() -> None:
    keys = vector_keys(VECTORS[0])
    assert not keys.login_disabled
    assert keys.with_salt(bytes(4)).login_disabled
    assert not keys.with_salt(b"\0\0\0\1").login_disabled


def test_blob_round_trip_is_big_endian() -> None:
    keys = vector_keys(VECTORS[0])
    assert keys.to_blob()[-4:] == bytes.fromhex("00001388")
    assert ScramKeys.from_blob(keys.to_blob()) == keys


# ---------------------------------------------------------------------------------------------------
# Credential forms


def test_ascii_password_form_keeps_hash_and_scram_keys() -> None:
    credential = credential_from_password("admin", bytes.fromhex("01020304"), 5000)
    assert credential.password_hash is not None
    assert credential.password_hash.hex() == VECTORS[0]["output"]["hashedPassword"]
    assert credential.scram == vector_keys(VECTORS[0])


def test_empty_password_is_a_valid_ascii_form() -> None:
    credential = credential_from_password("", bytes.fromhex("01000000"), 5000)
    assert credential.scram == vector_keys(VECTORS[2])


@pytest.mark.parametrize("password", ["a" * 17, "pässwörd", "tab\there", "nul\0", "\x7f"])
def test_ascii_form_refuses_what_cannot_be_typed_in_a_login_field(password: str) -> None:
    with pytest.raises(CredentialError) as caught:
        credential_from_password(password, b"\1\2\3\4", 5000)
    assert password not in str(caught.value)


def test_ascii_form_accepts_sixteen_printable_characters() -> None:
    password = string.printable[:16]
    credential = credential_from_password(password, b"\1\2\3\4", 3)
    assert credential.password_hash == hash_login_password(password)


@pytest.mark.parametrize(("salt", "iterations"), [(b"\1\2\3", 5000), (b"\1\2\3\4\5", 5000), (b"\1\2\3\4", 0)])
def test_ascii_form_validates_salt_and_iterations(salt: bytes, iterations: int) -> None:
    with pytest.raises(CredentialError):
        credential_from_password("admin", salt, iterations)


def test_hash_form_keeps_only_the_hash() -> None:
    password_hash = bytes.fromhex(VECTORS[3]["output"]["hashedPassword"])
    credential = credential_from_key(password_hash, current_iterations=0)  # iteration unused here
    assert credential == Credential(password_hash=password_hash, scram=None)


def test_sdk_key_form_records_the_current_iteration() -> None:
    key36 = bytes.fromhex(VECTORS[1]["output"]["passwordKey36"])
    credential = credential_from_key(key36, current_iterations=1000)
    assert credential.password_hash is None
    assert credential.scram == vector_keys(VECTORS[1])
    assert credential_from_key(key36, current_iterations=777).scram == vector_keys(
        VECTORS[1]
    ).with_iterations(777)
    with pytest.raises(CredentialError):
        credential_from_key(key36, current_iterations=0)


def test_full_blob_form_carries_its_own_big_endian_iteration() -> None:
    key36 = bytes.fromhex(VECTORS[0]["output"]["passwordKey36"])
    credential = credential_from_key(key36 + (5000).to_bytes(4, "big"), current_iterations=42)
    assert credential == Credential(scram=vector_keys(VECTORS[0]))
    little_endian = credential_from_key(key36 + (5000).to_bytes(4, "little"), current_iterations=42)
    assert little_endian.scram is not None
    assert little_endian.scram.iterations == 0x88130000
    with pytest.raises(CredentialError):
        credential_from_key(key36 + bytes(4), current_iterations=42)


def test_blob_with_all_zero_salt_is_stored_but_disables_login() -> None:
    key = bytes(range(32)) + bytes(4)
    credential = credential_from_key(key, current_iterations=5000)
    assert credential.scram is not None
    assert credential.scram.login_disabled


@pytest.mark.parametrize("length", [0, 1, 15, 17, 32, 35, 37, 39, 41, 64])
def test_other_key_lengths_are_refused_without_echoing_bytes(length: int) -> None:
    blob = bytes([0xAB]) * length
    with pytest.raises(CredentialError) as caught:
        credential_from_key(blob, current_iterations=5000)
    message = str(caught.value)
    assert str(length) in message
    assert "ab" not in message.lower()


def test_credential_validates_hash_length() -> None:
    with pytest.raises(CredentialError):
        Credential(password_hash=bytes(15))


# ---------------------------------------------------------------------------------------------------
# Credential serialisation


def test_serialisation_format_is_stable() -> None:
    credential = credential_from_password("admin", bytes.fromhex("01020304"), 5000)
    expected = (
        "0103" + VECTORS[0]["output"]["hashedPassword"] + VECTORS[0]["output"]["passwordKey36"] + "00001388"
    )
    assert credential.to_bytes().hex() == expected
    assert Credential().to_bytes() == b"\x01\x00"
    assert Credential(password_hash=bytes(16)).to_bytes() == b"\x01\x01" + bytes(16)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x02\x00",  # unknown version
        b"\x01\x04",  # unknown flag
        b"\x01\x01" + bytes(15),
        b"\x01\x01" + bytes(17),
        b"\x01\x02" + bytes(40),  # iteration 0
        b"\x01\x03" + bytes(16) + bytes(39),
    ],
)
def test_malformed_serialisations_are_refused(data: bytes) -> None:
    with pytest.raises(CredentialError):
        Credential.from_bytes(data)


@PROPERTY_SETTINGS
@given(
    password_hash=st.none() | st.binary(min_size=16, max_size=16),
    key=st.none() | st.binary(min_size=36, max_size=36),
    iterations=st.integers(min_value=1, max_value=2**32 - 1),
)
def test_serialisation_round_trips(password_hash: bytes | None, key: bytes | None, iterations: int) -> None:
    scram = None if key is None else credential_from_key(key, iterations).scram
    credential = Credential(password_hash=password_hash, scram=scram)
    assert Credential.from_bytes(credential.to_bytes()) == credential


# ---------------------------------------------------------------------------------------------------
# Secrets stay out of reprs


def test_reprs_hide_secrets() -> None:
    credential = credential_from_password("admin", bytes.fromhex("01020304"), 5000)
    assert credential.scram is not None and credential.password_hash is not None
    result = LoginResult(group_id=1, server_proof=b"\x11" * 16, session_key=b"\x22" * 16, username="admin")
    secrets = [credential.password_hash, credential.scram.stored_key, credential.scram.server_key]
    texts = [repr(credential), repr(credential.scram), str(credential)]
    for text in texts:
        for secret in secrets:
            assert secret.hex() not in text
            assert repr(secret) not in text
    assert "5000" in repr(credential.scram)  # non-secret fields stay visible
    assert repr(b"\x11" * 16) not in repr(result) and repr(b"\x22" * 16) not in repr(result)
    assert "admin" in repr(result)


# ---------------------------------------------------------------------------------------------------
# draw_user_salt


def test_drawn_salt_never_starts_with_zero() -> None:
    requested: list[int] = []

    def source(count: int) -> bytes:
        requested.append(count)
        return b"\x00\x05\x06\x07"

    assert draw_user_salt(source) == b"\x01\x05\x06\x07"
    assert requested == [4]
    assert draw_user_salt(lambda count: b"\xaa\xbb\xcc\xdd") == b"\xaa\xbb\xcc\xdd"
    assert draw_user_salt(lambda count: bytes(4)) == b"\x01\x00\x00\x00"


def test_drawn_salt_refuses_a_short_source() -> None:
    with pytest.raises(ValueError):
        draw_user_salt(lambda count: b"\1\2\3")


# ---------------------------------------------------------------------------------------------------
# Plain and 1-hash logins


def test_plain_login() -> None:
    credential = credential_from_password("admin", b"\1\2\3\4", 2)
    assert check_plain_login(credential, padded("admin"))
    assert not check_plain_login(credential, padded("admin1"))
    assert not check_plain_login(credential, padded("Admin"))
    assert not check_plain_login(credential, padded("adm\0in"))
    assert not check_plain_login(credential, b"admin")  # not a 16-byte field
    assert not check_plain_login(credential, padded("admin", 17))
    assert not check_plain_login(None, padded("admin"))


def test_zero_padding_does_not_change_the_hash() -> None:
    """check_plain_login hashes the padded field as is; this HMAC property is what makes that right."""
    assert hash_login_password("admin\0\0\0") == hash_login_password("admin")


def test_plain_login_with_full_field_and_with_empty_password() -> None:
    full = credential_from_password("0123456789abcdef", b"\1\2\3\4", 2)
    assert check_plain_login(full, b"0123456789abcdef")
    empty = credential_from_password("", b"\1\2\3\4", 2)
    assert check_plain_login(empty, bytes(16))
    assert not check_plain_login(empty, padded("x"))


def test_plain_login_works_from_the_hash_form() -> None:
    credential = credential_from_key(hash_login_password("bobpw"), current_iterations=5000)
    assert check_plain_login(credential, padded("bobpw"))
    assert not check_plain_login(credential, padded("bobpx"))


def test_hash_login() -> None:
    password_hash = hash_login_password("supervisor")
    credential = credential_from_key(password_hash, current_iterations=5000)
    assert check_hash_login(credential, password_hash)
    assert check_hash_login(credential_from_password("supervisor", b"\1\2\3\4", 2), password_hash)
    assert not check_hash_login(credential, hash_login_password("supervisos"))
    assert not check_hash_login(credential, password_hash[:15])
    assert not check_hash_login(None, password_hash)


def test_scram_only_credential_refuses_plain_and_hash_login() -> None:
    credential = credential_from_key(bytes.fromhex(VECTORS[0]["output"]["passwordKey36"]), 5000)
    assert not check_plain_login(credential, padded("admin"))
    assert not check_hash_login(credential, hash_login_password("admin"))
    # The placeholder compared for missing hashes must not itself be a way in.
    assert not check_hash_login(credential, bytes(16))
    assert not check_hash_login(Credential(), bytes(16))


@PROPERTY_SETTINGS
@given(password=LOGIN_PASSWORDS, other=LOGIN_PASSWORDS)
def test_plain_and_hash_login_property(password: str, other: str) -> None:
    assume(other != password)
    credential = credential_from_password(password, b"\1\2\3\4", 1)
    hash_only = credential_from_key(hash_login_password(password), current_iterations=1)
    for stored in (credential, hash_only):
        assert check_plain_login(stored, padded(password))
        assert check_hash_login(stored, hash_login_password(password))
        assert not check_plain_login(stored, padded(other))
        assert not check_hash_login(stored, hash_login_password(other))


# ---------------------------------------------------------------------------------------------------
# Handshake


def admin_handshake(**kwargs: Any) -> ScramServerHandshake:
    return ScramServerHandshake(directory({"admin": (0xFFFF, vector_keys(VECTORS[0]))}), DECOY_KEY, **kwargs)


def test_handshake_parses_the_sdk_capture() -> None:
    """Step 1 as captured from the SDK (spec B.4): "admin" zero-padded, client nonce 0xd050a27e."""
    seen: list[str] = []
    handshake = ScramServerHandshake(directory({"admin": (0xFFFF, vector_keys(VECTORS[0]))}, seen), DECOY_KEY)
    request = bytes.fromhex("61646d696e0000000000000000000000" + "d050a27e")
    response = handshake.start(request, 0x0BADCAFE)
    assert seen == ["admin"]
    assert response == bytes.fromhex("0badcafe" + "01020304" + "00001388")
    result = handshake.finish(client_proof(vector_keys(VECTORS[0]), 0xD050A27E, 0x0BADCAFE))
    assert result.group_id == 0xFFFF
    assert result.session_key == session_key(vector_keys(VECTORS[0]), 0xD050A27E, 0x0BADCAFE)


def test_the_username_is_the_field_up_to_its_zero_padding_and_nothing_else() -> None:
    """Login by name is exact: bytes after the padding make a name no group can hold."""
    seen: list[str] = []
    handshake = ScramServerHandshake(directory({}, seen), DECOY_KEY)
    handshake.start(padded(b"admin") + bytes(4), 1)
    assert seen == ["admin"]
    for field, name in (
        (padded(b"admin\0junk"), "admin\0junk".ljust(16, "\0")),
        (padded(b"Admin"), "Admin"),
        (padded(b"admin "), "admin "),
        (b"sixteen-chars-xx", "sixteen-chars-xx"),
        (bytes(16), ""),
    ):
        assert login_name(field) == name


def test_sdk_logs_in_with_the_password() -> None:
    keys, result = sdk_login(admin_handshake(), "admin", "admin", 0x01020304, 0xA1B2C3D4)
    assert result.group_id == 0xFFFF
    assert result.username == "admin"
    assert result.server_proof == server_proof(keys, 0x01020304, 0xA1B2C3D4)
    assert result.session_key.hex() == VECTORS[0]["output"]["sessionKey"]


def test_wrong_password_fails() -> None:
    with pytest.raises(AuthenticationFailed):
        sdk_login(admin_handshake(), "admin", "admin2", 1, 2)


@pytest.mark.parametrize("proof", [b"", bytes(15), bytes(16), bytes(17)])
def test_malformed_or_zero_proof_fails(proof: bytes) -> None:
    handshake = admin_handshake()
    handshake.start(login_request("admin", 1), 2)
    with pytest.raises(AuthenticationFailed):
        handshake.finish(proof)


def test_proof_for_another_client_nonce_fails() -> None:
    handshake = admin_handshake()
    handshake.start(login_request("admin", 1000), 2000)
    with pytest.raises(AuthenticationFailed):
        handshake.finish(client_proof(vector_keys(VECTORS[0]), 1001, 2000))


def test_replayed_proof_fails_under_a_new_server_nonce() -> None:
    keys = vector_keys(VECTORS[0])
    first = admin_handshake()
    first.start(login_request("admin", 1000), 2000)
    captured = client_proof(keys, 1000, 2000)
    first.finish(captured)

    second = admin_handshake()
    second.start(login_request("admin", 1000), 2001)
    with pytest.raises(AuthenticationFailed):
        second.finish(captured)


def test_unknown_user_gets_a_plausible_stable_answer_and_then_fails() -> None:
    def answer(username: str, decoy_key: bytes = DECOY_KEY, decoy_iterations: int = 5000) -> bytes:
        handshake = ScramServerHandshake(directory({}), decoy_key, decoy_iterations=decoy_iterations)
        return handshake.start(login_request(username, 5), 77)

    nonce, salt, iterations = parse_login_response(answer("ghost"))
    assert nonce == 77
    assert salt[0] != 0
    assert iterations == 5000
    assert answer("ghost") == answer("ghost")  # like a real user, the salt does not change per attempt
    assert answer("ghost") != answer("ghost2")
    assert answer("ghost") != answer("ghost", decoy_key=bytes(32))
    assert parse_login_response(answer("ghost", decoy_iterations=4096))[2] == 4096

    handshake = ScramServerHandshake(directory({}), DECOY_KEY)
    with pytest.raises(AuthenticationFailed) as unknown:
        sdk_login(handshake, "ghost", "any password", 5, 77)
    with pytest.raises(AuthenticationFailed) as wrong_proof:
        sdk_login(admin_handshake(), "admin", "not admin", 5, 77)
    assert str(unknown.value) == str(wrong_proof.value)


def test_unknown_user_fails_even_with_the_decoy_keys() -> None:
    """The decoy keys are internal; even a proof made with them must not log in."""
    handshake = ScramServerHandshake(directory({}), DECOY_KEY)
    handshake.start(login_request("ghost", 5), 77)
    decoy = handshake._attempt.keys if handshake._attempt else None
    assert decoy is not None
    with pytest.raises(AuthenticationFailed):
        handshake.finish(client_proof(decoy, 5, 77))


def test_all_zero_salt_disables_login_and_looks_like_an_unknown_user() -> None:
    disabled = vector_keys(VECTORS[0]).with_salt(bytes(4))
    handshake = ScramServerHandshake(directory({"admin": (0xFFFF, disabled)}), DECOY_KEY)
    response = handshake.start(login_request("admin", 5), 77)
    unknown_response = ScramServerHandshake(directory({}), DECOY_KEY).start(login_request("admin", 5), 77)
    assert response == unknown_response
    assert parse_login_response(response)[1] != bytes(4)
    with pytest.raises(AuthenticationFailed):
        handshake.finish(client_proof(disabled, 5, 77))


@pytest.mark.parametrize("length", [0, 16, 19, 21])
def test_malformed_request_fails_and_closes(length: int) -> None:
    handshake = admin_handshake()
    with pytest.raises(AuthenticationFailed):
        handshake.start(login_request("admin", 1)[:length].ljust(length, b"\0"), 2)
    with pytest.raises(AuthenticationFailed):
        handshake.start(login_request("admin", 1), 2)


def test_finish_before_start_fails() -> None:
    handshake = admin_handshake()
    with pytest.raises(AuthenticationFailed):
        handshake.finish(client_proof(vector_keys(VECTORS[0]), 1, 2))
    with pytest.raises(AuthenticationFailed):
        handshake.start(login_request("admin", 1), 2)


def test_start_twice_fails_and_closes() -> None:
    handshake = admin_handshake()
    handshake.start(login_request("admin", 1), 2)
    with pytest.raises(AuthenticationFailed):
        handshake.start(login_request("admin", 1), 2)
    with pytest.raises(AuthenticationFailed):
        handshake.finish(client_proof(vector_keys(VECTORS[0]), 1, 2))


def test_handshake_is_single_use() -> None:
    proof = client_proof(vector_keys(VECTORS[0]), 1, 2)
    handshake = admin_handshake()
    handshake.start(login_request("admin", 1), 2)
    handshake.finish(proof)
    with pytest.raises(AuthenticationFailed):
        handshake.finish(proof)

    failed = admin_handshake()
    failed.start(login_request("admin", 1), 2)
    with pytest.raises(AuthenticationFailed):
        failed.finish(bytes(16))
    with pytest.raises(AuthenticationFailed):
        failed.finish(proof)  # no second guess after a wrong proof


def test_keys_are_those_looked_up_at_step_one() -> None:
    entries = {"admin": (0xFFFF, vector_keys(VECTORS[0]))}
    handshake = ScramServerHandshake(directory(entries), DECOY_KEY)
    handshake.start(login_request("admin", 1), 2)
    entries["admin"] = (0xFFFF, vector_keys(VECTORS[1]))
    assert handshake.finish(client_proof(vector_keys(VECTORS[0]), 1, 2)).group_id == 0xFFFF


@pytest.mark.parametrize("nonce", [-1, 2**32, True])
def test_out_of_range_nonces_are_programming_errors(nonce: int) -> None:
    with pytest.raises(ValueError):
        admin_handshake().start(login_request("admin", 1), nonce)
    with pytest.raises(ValueError):
        client_proof(vector_keys(VECTORS[0]), nonce, 1)
    with pytest.raises(ValueError):
        server_proof(vector_keys(VECTORS[0]), 1, nonce)


def test_handshake_needs_a_real_decoy_key_and_iteration() -> None:
    with pytest.raises(ValueError):
        ScramServerHandshake(directory({}), b"short")
    with pytest.raises(CredentialError):
        ScramServerHandshake(directory({}), DECOY_KEY, decoy_iterations=0)


@PROPERTY_SETTINGS
@given(
    password=LOGIN_PASSWORDS,
    other_password=LOGIN_PASSWORDS,
    salt=USER_SALTS,
    iterations=SMALL_ITERATIONS,
    client_nonce=U32,
    server_nonce=U32,
    other_nonce=U32,
    tamper_at=st.integers(min_value=0, max_value=127),
)
def test_handshake_property(
    password: str,
    other_password: str,
    salt: bytes,
    iterations: int,
    client_nonce: int,
    server_nonce: int,
    other_nonce: int,
    tamper_at: int,
) -> None:
    """For each stored form, the right password logs in; another password, proof or nonce does not."""
    assume(other_password != password)
    derived = derive_scram_keys(hash_login_password(password), salt, iterations)
    forms = {
        "ascii": credential_from_password(password, salt, iterations),
        "key36": credential_from_key(derived.to_password_key(), current_iterations=iterations),
        "key40": credential_from_key(derived.to_blob(), current_iterations=iterations + 1),
    }
    for form, credential in forms.items():
        assert credential.scram is not None, form

        def fresh(credential: Credential = credential) -> ScramServerHandshake:
            assert credential.scram is not None
            return ScramServerHandshake(directory({"user": (3, credential.scram)}), DECOY_KEY)

        client_keys, result = sdk_login(fresh(), "user", password, client_nonce, server_nonce)
        assert result.group_id == 3, form
        assert result.server_proof == server_proof(client_keys, client_nonce, server_nonce), form
        assert result.session_key == session_key(client_keys, client_nonce, server_nonce), form

        with pytest.raises(AuthenticationFailed):
            sdk_login(fresh(), "user", other_password, client_nonce, server_nonce)

        proof = client_proof(client_keys, client_nonce, server_nonce)
        tampered = bytearray(proof)
        tampered[tamper_at // 8] ^= 1 << (tamper_at % 8)
        handshake = fresh()
        handshake.start(login_request("user", client_nonce), server_nonce)
        with pytest.raises(AuthenticationFailed):
            handshake.finish(bytes(tampered))

        if other_nonce != client_nonce:
            handshake = fresh()
            handshake.start(login_request("user", client_nonce), server_nonce)
            with pytest.raises(AuthenticationFailed):
                handshake.finish(client_proof(client_keys, other_nonce, server_nonce))
        if other_nonce != server_nonce:
            handshake = fresh()
            handshake.start(login_request("user", client_nonce), other_nonce)
            with pytest.raises(AuthenticationFailed):
                handshake.finish(proof)


def test_default_iteration_matches_the_sdk_configurator() -> None:
    assert DEFAULT_SCRAM_ITERATIONS == 5000
    response = ScramServerHandshake(directory({}), DECOY_KEY).start(login_request("nobody", 1), 2)
    assert parse_login_response(response)[2] == 5000
