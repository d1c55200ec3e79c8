"""Ansible filters shared by the roles that tune the kernel (common, redis).

- ``ansible_facts | celery_stack_in_container``: whether the host is a
  container (systemd-nspawn, docker, podman, lxc, ...), from the
  virtualization facts.
- ``settings | celery_stack_sysctl_live(ansible_facts)``: the sysctl settings
  that may be applied to the running kernel: all of them on a machine; inside
  a container only the per-network-namespace ones, since vm.*, fs.*,
  kernel.*, dev.* and a few net.core keys (bpf_jit_*, the
  netdev_* queue settings)
  belong to the machine that runs the container (they are still
  written to the sysctl.d file, for the day the same role runs on a VM).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

# Values of ansible_facts['virtualization_type'] that mean "this host is a container".
CONTAINER_TYPES = frozenset({"docker", "container", "containerd", "podman", "lxc", "systemd-nspawn"})
# Host-global sysctl prefixes: never applied live inside a container.
HOST_GLOBAL_PREFIXES = ("vm.", "fs.", "kernel.", "dev.", "user.")
# net.* keys that exist only in the machine's first network namespace: a
# container's namespace has no such file.
HOST_GLOBAL_NET_KEYS = frozenset(
    {
        "net.core.bpf_jit_enable",
        "net.core.bpf_jit_harden",
        "net.core.bpf_jit_kallsyms",
        "net.core.bpf_jit_limit",
        "net.core.netdev_budget",
        "net.core.netdev_budget_usecs",
        "net.core.netdev_max_backlog",
        "net.core.dev_weight",
    }
)


def celery_stack_in_container(facts: Mapping[str, Any]) -> bool:
    """True when the facts describe a container guest."""
    return facts.get("virtualization_role") == "guest" and facts.get("virtualization_type") in CONTAINER_TYPES


def celery_stack_sysctl_live(settings: Mapping[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """The settings this host's kernel may take now (net.* only inside a container)."""
    if not celery_stack_in_container(facts):
        return dict(settings)
    return {
        key: value
        for key, value in settings.items()
        if not key.startswith(HOST_GLOBAL_PREFIXES) and key not in HOST_GLOBAL_NET_KEYS
    }


class FilterModule:
    """celery-stack kernel filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Map filter names to functions."""
        return {
            "celery_stack_in_container": celery_stack_in_container,
            "celery_stack_sysctl_live": celery_stack_sysctl_live,
        }
