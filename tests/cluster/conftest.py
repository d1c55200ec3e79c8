"""Cross-host checks of the cluster scenario (molecule/cluster): one testinfra host per inventory host.

Tests here take the ``cluster`` fixture, not testinfra's per-host ``host``: each
one runs once and reaches the hosts it needs by name. The helpers of the
all-in-one suite (tests/integration) are reused.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

NETWORK = "celery-stack-cluster"


@pytest.fixture(scope="session")
def inventory() -> str:
    path = os.environ.get("MOLECULE_INVENTORY_FILE")
    assert path, "MOLECULE_INVENTORY_FILE is not set: run these checks with `molecule verify -s cluster`"
    return path


@pytest.fixture(scope="session")
def cluster(inventory):
    """name -> testinfra host, for every host of the scenario's inventory."""
    hosts = testinfra.get_hosts(["all"], ansible_inventory=inventory, connection="ansible")
    return {h.backend.host: h for h in hosts}


@pytest.fixture(scope="session")
def groups(cluster) -> dict[str, list[str]]:
    """Ansible's groups, as the inventory defines them."""
    any_host = next(iter(cluster.values()))
    # testinfra lists a host once per group it is in under "all": de-duplicated here.
    return {name: sorted(set(members)) for name, members in any_host.ansible.get_variables()["groups"].items()}


@pytest.fixture(scope="session")
def addresses(cluster) -> dict[str, str]:
    return {name: h.ansible.get_variables()["celery_stack_private_address"] for name, h in cluster.items()}


def plan_of(host) -> dict:
    return json.loads(host.file("/etc/celery-stack/capacity-plan.json").content_string)
