"""The SCRAM-SHA-256 verifiers role pgbouncer writes to PgBouncer's auth_file."""
from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "roles" / "pgbouncer" / "filter_plugins" / "pgbouncer_scram.py"

# Made by PostgreSQL 17: CREATE ROLE r PASSWORD 'correct horse battery staple'; SELECT rolpassword ...
POSTGRES_VERIFIER = (
    "SCRAM-SHA-256$4096:ZekSttg3mjrWGd/yXGjhYA==$n9R2dzIVmu98CPmR7CjBOLCsl0hKA9kDoxY3YquR0F4="
    ":FIv90RM4KAwOXqoYWgKfdlWLPePncks7nzkRnB3UDsI="
)
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def scram():
    spec = importlib.util.spec_from_file_location("pgbouncer_scram", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_verifier_as_postgresql(scram):
    salt = base64.b64decode("ZekSttg3mjrWGd/yXGjhYA==")
    assert scram.scram_verifier(PASSWORD, salt, 4096) == POSTGRES_VERIFIER


def test_current_verifier_is_kept_when_it_matches(scram):
    assert scram.pgbouncer_scram_secret(PASSWORD, POSTGRES_VERIFIER) == POSTGRES_VERIFIER


@pytest.mark.parametrize("current", [None, "", "md5abc", "SCRAM-SHA-256$4096:bad", POSTGRES_VERIFIER])
def test_new_verifier_with_random_salt_otherwise(scram, current):
    fresh = scram.pgbouncer_scram_secret("another password 0123", current)
    assert fresh != POSTGRES_VERIFIER and fresh.startswith("SCRAM-SHA-256$4096:")
    assert scram.pgbouncer_scram_secret("another password 0123", fresh) == fresh
    assert scram.pgbouncer_scram_secret("another password 0123") != fresh  # random salt


def test_filter_is_registered(scram):
    assert scram.FilterModule().filters() == {"pgbouncer_scram_secret": scram.pgbouncer_scram_secret}
