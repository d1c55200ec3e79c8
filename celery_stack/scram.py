"""SCRAM-SHA-256 verifiers, computed on the controller (roles postgresql, pgbouncer).

A verifier is what PostgreSQL stores in pg_authid and PgBouncer accepts in its
auth_file: ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``
(RFC 5802/7677). It proves a password without containing it, so the roles
hand verifiers to the server instead of passwords. The salt is random; to stay
idempotent, :func:`scram_secret` keeps the current verifier when it already
matches the password *and* the requested iteration count, and makes a new one
otherwise (a changed password, or a changed ``*_scram_iterations``).

Passwords must be ASCII (SASLprep is then the identity), which the roles'
input checks enforce.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

_VERIFIER_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$")
# PostgreSQL's default (scram_iterations) and RFC 7677's recommended minimum.
DEFAULT_ITERATIONS = 4096


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scram_verifier(password: str, salt: bytes, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Return the SCRAM-SHA-256 verifier of ``password`` for ``salt``."""
    if int(iterations) < 1:
        raise ValueError(f"SCRAM iterations must be at least 1, got {iterations}")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${int(iterations)}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def verifier_iterations(verifier: str | None) -> int | None:
    """The iteration count of a SCRAM-SHA-256 verifier, None for anything else."""
    match = _VERIFIER_RE.match(verifier or "")
    return int(match.group(1)) if match else None


def scram_secret(password: str, current: str | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """A verifier of ``password`` with ``iterations``: ``current`` if it is one, else a new one (random salt)."""
    match = _VERIFIER_RE.match(current or "")
    if match and int(match.group(1)) == int(iterations):
        kept = scram_verifier(password, base64.b64decode(match.group(2)), int(match.group(1)))
        if hmac.compare_digest(kept, current):
            return current
    return scram_verifier(password, os.urandom(16), iterations)
