"""Shared helpers for the testinfra checks of every Molecule scenario.

The expected values are the role variables as Ansible resolves them for the
host: the role's defaults/main.yml, overridden by the inventory (group_vars
and host_vars that Molecule links from inventories/local). Templated defaults
are not rendered here, so tests only compare literal settings.
"""
from __future__ import annotations

import json

import pytest
from stack import PLAN_FILE, role_defaults


@pytest.fixture(scope="module")
def inventory_vars(host) -> dict:
    """Inventory variables of the host under test (group_vars + host_vars)."""
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def role_vars(inventory_vars):
    """role_vars("common") -> effective variables of role common for the host."""

    def resolve(role: str) -> dict:
        merged = role_defaults(role)
        merged.update({k: v for k, v in inventory_vars.items() if k.startswith(f"{role}_")})
        return merged

    return resolve


@pytest.fixture(scope="module")
def hostname(host) -> str:
    return host.run("hostname").stdout.strip()


@pytest.fixture(scope="module")
def pools(plan) -> list[dict]:
    """The Celery worker pools of the host's plan."""
    return plan["celery"]["pools"]


@pytest.fixture(scope="module")
def plan(host) -> dict:
    """The capacity plan this host was converged with (root:root 0644)."""
    f = host.file(PLAN_FILE)
    assert f.exists and f.user == "root" and f.mode == 0o644
    return json.loads(f.content_string)
