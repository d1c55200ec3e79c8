"""SCRAM-SHA-256 verifiers for PgBouncer's auth_file (role pgbouncer).

PgBouncer accepts a verifier in the format PostgreSQL stores in pg_authid:
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5802/7677).
A verifier proves a password without containing it. The salt is random; to
stay idempotent the filter keeps the current verifier when it already matches
the password. Passwords must be ASCII (SASLprep is then the identity), which
the role's input checks enforce.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

_VERIFIER_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scram_verifier(password: str, salt: bytes, iterations: int = 4096) -> str:
    """Return the SCRAM-SHA-256 verifier of ``password`` for ``salt``."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def pgbouncer_scram_secret(password: str, current: str | None = None, iterations: int = 4096) -> str:
    """A verifier of ``password``: ``current`` if it matches, else a new one with a random salt."""
    match = _VERIFIER_RE.match(current or "")
    if match:
        kept = scram_verifier(password, base64.b64decode(match.group(2)), int(match.group(1)))
        if hmac.compare_digest(kept, current):
            return current
    return scram_verifier(password, os.urandom(16), iterations)


class FilterModule:
    """Ansible filters of role pgbouncer."""

    def filters(self):
        return {"pgbouncer_scram_secret": pgbouncer_scram_secret}
