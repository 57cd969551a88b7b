"""Security primitives of the emulated Tap: password hashing, stored credentials and SCRAM login.

Sans-IO (see `scram`): the faces run the heavy derivations in worker threads and feed the handshake
with nonces they draw themselves.
"""

from tap_emulator.security.scram import (
    DEFAULT_SCRAM_ITERATIONS,
    KEY_LENGTH,
    MAX_LOGIN_PASSWORD_LENGTH,
    SALT_LENGTH,
    USERNAME_LENGTH,
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
    is_password_key,
    login_name,
    salted_password,
    server_proof,
    session_key,
)

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
    "is_password_key",
    "login_name",
    "salted_password",
    "server_proof",
    "session_key",
]
