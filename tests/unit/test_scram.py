"""SCRAM-SHA-256 verifiers computed on the controller (celery_stack/scram.py, filter celery_stack_scram_secret)."""
from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from celery_stack import scram

PLUGIN = Path(__file__).resolve().parents[2] / "filter_plugins" / "scram.py"

# Made by PostgreSQL 17: CREATE ROLE r PASSWORD 'correct horse battery staple'; SELECT rolpassword ...
POSTGRES_VERIFIER = (
    "SCRAM-SHA-256$4096:ZekSttg3mjrWGd/yXGjhYA==$n9R2dzIVmu98CPmR7CjBOLCsl0hKA9kDoxY3YquR0F4="
    ":FIv90RM4KAwOXqoYWgKfdlWLPePncks7nzkRnB3UDsI="
)
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def plugin():
    spec = importlib.util.spec_from_file_location("celery_stack_scram_filter", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_verifier_as_postgresql():
    salt = base64.b64decode("ZekSttg3mjrWGd/yXGjhYA==")
    assert scram.scram_verifier(PASSWORD, salt, 4096) == POSTGRES_VERIFIER
    assert scram.verifier_iterations(POSTGRES_VERIFIER) == 4096


def test_current_verifier_is_kept_when_it_matches():
    assert scram.scram_secret(PASSWORD, POSTGRES_VERIFIER) == POSTGRES_VERIFIER


@pytest.mark.parametrize("current", [None, "", "md5abc", "SCRAM-SHA-256$4096:bad", POSTGRES_VERIFIER])
def test_new_verifier_with_random_salt_otherwise(current):
    fresh = scram.scram_secret("another password 0123", current)
    assert fresh != POSTGRES_VERIFIER and fresh.startswith("SCRAM-SHA-256$4096:")
    assert scram.scram_secret("another password 0123", fresh) == fresh
    assert scram.scram_secret("another password 0123") != fresh  # random salt


def test_other_iteration_count_makes_a_new_verifier_then_keeps_it():
    fewer = scram.scram_secret(PASSWORD, POSTGRES_VERIFIER, 128)
    assert fewer != POSTGRES_VERIFIER and scram.verifier_iterations(fewer) == 128
    assert scram.scram_secret(PASSWORD, fewer, 128) == fewer
    # Back to the default: a new 4096-iteration verifier, not the 128 one.
    assert scram.verifier_iterations(scram.scram_secret(PASSWORD, fewer, 4096)) == 4096


def test_verifier_with_fewer_iterations_still_proves_the_password():
    salt = b"0123456789abcdef"
    verifier = scram.scram_verifier(PASSWORD, salt, 16)
    assert verifier.startswith("SCRAM-SHA-256$16:" + base64.b64encode(salt).decode())
    assert verifier != scram.scram_verifier("another password", salt, 16)


def test_filter_refuses_zero_iterations_and_non_ascii(plugin):
    with pytest.raises(AnsibleFilterError, match="at least 1, got 0"):
        plugin.celery_stack_scram_secret(PASSWORD, None, 0)
    with pytest.raises(AnsibleFilterError, match="ASCII"):
        plugin.celery_stack_scram_secret("pässword", None, 4096)


def test_filter_is_registered(plugin):
    filters = plugin.FilterModule().filters()
    assert list(filters) == ["celery_stack_scram_secret"]
    assert filters["celery_stack_scram_secret"](PASSWORD, POSTGRES_VERIFIER, "4096") == POSTGRES_VERIFIER
