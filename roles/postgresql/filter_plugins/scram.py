"""postgresql_scram_verifier: the SCRAM-SHA-256 verifier PostgreSQL stores for a password.

`ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'` stores a verifier as given, so the plaintext never
reaches the server: not its log (log_statement, an error's statement), not pg_stat_activity.
The verifier is computed on the controller, as libpq's PQencryptPasswordConn and PostgreSQL's
scram_build_secret compute it (RFC 5802 and RFC 7677), with a random salt of 16 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata

DOCUMENTATION = r"""
name: postgresql_scram_verifier
short_description: The SCRAM-SHA-256 verifier of a password, as PostgreSQL stores it
description:
  - Returns C(SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>), for
    C(ALTER ROLE ... PASSWORD), so the plaintext never reaches the server.
options:
  _input:
    description: The password.
    type: str
    required: true
  salt:
    description: Base64 salt (default 16 random bytes); for tests.
    type: str
  iterations:
    description: PBKDF2 iterations (PostgreSQL's default, scram_iterations, is 4096).
    type: int
    default: 4096
"""

ITERATIONS = 4096
SALT_BYTES = 16


def _saslprep(password: str) -> bytes:
    """RFC 4013 SASLprep as PostgreSQL applies it (pg_saslprep), else the raw bytes.

    PostgreSQL falls back to the password's bytes as they are when it is not valid UTF-8 or
    SASLprep prohibits a character in it; an ASCII password without control characters maps
    to itself.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char for char in password if not stringprep.in_table_b1(char)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return password.encode()
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21,
        stringprep.in_table_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(check(char) for char in normalized for check in prohibited):
        return password.encode()
    # Bidirectional text (RFC 3454 section 6): RandALCat characters need one at each end.
    if any(stringprep.in_table_d1(char) for char in normalized):
        if any(stringprep.in_table_d2(char) for char in normalized):
            return password.encode()
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return password.encode()
    return normalized.encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def postgresql_scram_verifier(password: str, salt: str | None = None, iterations: int = ITERATIONS) -> str:
    """The verifier PostgreSQL would store for `password` (password_encryption = scram-sha-256)."""
    if not isinstance(password, str) or not password:
        raise ValueError("postgresql_scram_verifier needs a non-empty password")
    raw_salt = base64.b64decode(salt) if salt else os.urandom(SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), raw_salt, int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return f"SCRAM-SHA-256${int(iterations)}:{_b64(raw_salt)}${_b64(stored_key)}:{_b64(server_key)}"


class FilterModule:
    """Ansible's entry point for the role's filters."""

    def filters(self) -> dict:
        return {"postgresql_scram_verifier": postgresql_scram_verifier}
