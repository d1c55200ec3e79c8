"""Helpers shared by the testinfra checks (plain functions; fixtures live in conftest.py)."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# Passwords of the local inventory, generated on the controller by its
# password lookups (git-ignored).
SECRETS = ROOT / ".secrets" / "local"
# The capacity plan the host was converged with (playbooks/site.yml).
PLAN_FILE = "/etc/celery-stack/capacity-plan.json"


def role_defaults(role: str) -> dict:
    """Return the parsed defaults/main.yml of a role of this repository."""
    path = ROOT / "roles" / role / "defaults" / "main.yml"
    return yaml.safe_load(path.read_text()) or {}


def default_names(role: str, variable: str) -> list[str]:
    """The ``name`` of every entry of a list variable in a role's defaults (test parameters)."""
    return [entry["name"] for entry in role_defaults(role)[variable]]


def secret(name: str) -> str:
    """A password generated on the controller by the local inventory's password lookup."""
    return (SECRETS / name).read_text().split()[0]


def in_container(host) -> bool:
    return host.run("systemd-detect-virt --container --quiet").rc == 0


def listening(host, port: int) -> set[str]:
    """Local addresses (address:port) with a TCP listener on this port."""
    sockets = set()
    for line in host.run("ss -Hltn").stdout.splitlines():
        local = line.split()[3]
        if local.endswith(f":{port}"):
            sockets.add(local)
    return sockets


def unit_properties(host, unit: str, *names: str) -> dict[str, str]:
    """systemd properties of a unit, read with `systemctl show -p NAME ...`."""
    out = host.run(f"systemctl show {unit} " + " ".join(f"-p {name}" for name in names)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
