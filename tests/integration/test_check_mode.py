"""Dry runs: `site.yml --check --diff` on the converged host.

Unchanged inventory: scripts/molecule-test.sh runs `molecule check` after the
idempotence step and requires changed=0. Here: a changed inventory shows the
diff of each file it would change, and changes nothing on the host.
"""
from __future__ import annotations

import json
import re

from app_client import ansible_playbook

SYSCTL_FILE = "/etc/sysctl.d/60-celery-stack.conf"
NGINX_CONF = "/etc/nginx/nginx.conf"
# A kernel setting celery-stack does not set, per network namespace (live in a container too).
EXTRA_KEY, EXTRA_VALUE = "net.ipv4.tcp_keepalive_time", 600


def recap(output: str) -> dict[str, int]:
    """The PLAY RECAP counters of the (single) host."""
    line = next(line for line in output.splitlines() if re.match(r"^\S+\s+: ok=\d+", line))
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def test_check_mode_shows_the_diff_of_a_changed_inventory_and_changes_nothing(host, inventory_vars, role_vars):
    files = [SYSCTL_FILE] + ([NGINX_CONF] if "web" in inventory_vars.get("group_names", []) else [])
    before = host.run("stat -c '%n %Y %s' " + " ".join(files)).stdout
    live = host.run(f"sysctl -n {EXTRA_KEY}").stdout.strip()
    assert live != str(EXTRA_VALUE), f"{EXTRA_KEY} is already {EXTRA_VALUE}: pick another value"
    connections = int(role_vars("nginx")["nginx_worker_connections"]) + 512
    extra = {"common_sysctl_extra": {EXTRA_KEY: EXTRA_VALUE}, "nginx_worker_connections": connections}
    result = ansible_playbook("site.yml", "--check", "--diff", "-e", json.dumps(extra))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    counters = recap(result.stdout)
    assert counters["failed"] == 0 and counters["changed"] >= 1, counters
    # The diff of each file, as it would be written.
    assert f"+{EXTRA_KEY} = {EXTRA_VALUE}" in output, output[-4000:]
    if NGINX_CONF in files:
        assert f"+    worker_connections {connections};" in output, output[-4000:]
    # Nothing changed: files, the running kernel.
    assert host.run("stat -c '%n %Y %s' " + " ".join(files)).stdout == before
    assert host.run(f"sysctl -n {EXTRA_KEY}").stdout.strip() == live
