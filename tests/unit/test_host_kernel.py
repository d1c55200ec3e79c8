"""The kernel filters shared by roles common and redis (filter_plugins/host_kernel.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "filter_plugins" / "host_kernel.py"
_SPEC = importlib.util.spec_from_file_location("host_kernel", _PATH)
assert _SPEC and _SPEC.loader
host_kernel = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(host_kernel)

SETTINGS = {
    "net.core.somaxconn": 4096,
    "net.ipv4.conf.all.rp_filter": 1,
    "vm.swappiness": 10,
    "fs.file-max": 2097152,
    "kernel.pid_max": 4194304,
    "dev.tty.ldisc_autoload": 0,
    # net.* but only in the machine's first network namespace
    "net.core.bpf_jit_harden": 2,
    "net.core.netdev_max_backlog": 5000,
}


@pytest.mark.parametrize("kind", ["docker", "podman", "lxc", "systemd-nspawn", "container", "containerd"])
def test_containers_take_only_per_namespace_settings(kind: str) -> None:
    facts = {"virtualization_role": "guest", "virtualization_type": kind}
    assert host_kernel.celery_stack_in_container(facts) is True
    assert host_kernel.celery_stack_sysctl_live(SETTINGS, facts) == {
        "net.core.somaxconn": 4096,
        "net.ipv4.conf.all.rp_filter": 1,
    }


@pytest.mark.parametrize(
    "facts",
    [
        {"virtualization_role": "guest", "virtualization_type": "kvm"},
        {"virtualization_role": "host", "virtualization_type": "docker"},
        {},
    ],
    ids=["vm", "docker-host", "no-facts"],
)
def test_machines_take_every_setting(facts: dict) -> None:
    assert host_kernel.celery_stack_in_container(facts) is False
    assert host_kernel.celery_stack_sysctl_live(SETTINGS, facts) == SETTINGS


def test_filters_are_registered() -> None:
    assert set(host_kernel.FilterModule().filters()) == {"celery_stack_in_container", "celery_stack_sysctl_live"}
