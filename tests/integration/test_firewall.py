"""Role firewall on the converged host: its own nftables table, Docker's rules left alone.

The cross-host rules (who may reach PostgreSQL, PgBouncer, Redis, the
exporters) are checked live by the cluster scenario (tests/cluster); here the
all-in-one host proves the table, its input policy, what it lets in from
outside, and that neither a reload nor `systemctl restart nftables` removes
Docker's rules (the application's containers keep their network).
"""
from __future__ import annotations

import json

import pytest
from app_client import ansible_playbook, require_all_in_one

TABLE = "celery_stack"


def nft_table(host) -> list[dict]:
    result = host.run(f"nft -j list table inet {TABLE}")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)["nftables"]


def chain(items: list[dict]) -> dict:
    return next(item["chain"] for item in items if "chain" in item and item["chain"]["name"] == "input")


def accepted_ports(items: list[dict]) -> set[int]:
    """TCP destination ports an input rule accepts (single ports and sets)."""
    ports: set[int] = set()
    for item in items:
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule["expr"]:
            match = expr.get("match")
            payload = match["left"].get("payload", {}) if match else {}
            if payload.get("protocol") == "tcp" and payload.get("field") == "dport":
                right = match["right"]
                values = right["set"] if isinstance(right, dict) and "set" in right else [right]
                ports.update(value for value in values if isinstance(value, int))
    return ports


def test_own_table_with_a_dropping_input_chain(host):
    items = nft_table(host)
    input_chain = chain(items)
    assert (input_chain["type"], input_chain["hook"], input_chain["policy"]) == ("filter", "input", "drop")
    # The stack never flushes the ruleset: only its table is in /etc/nftables.conf.
    conf = host.file("/etc/nftables.conf").content_string
    assert not [line for line in conf.splitlines() if line.strip().startswith("flush")], conf
    assert "ExecStop=-/usr/sbin/nft delete table inet celery_stack" in host.file(
        "/etc/systemd/system/nftables.service.d/celery-stack.conf"
    ).content_string
    assert host.service("nftables").is_enabled


def test_all_in_one_opens_only_ssh_and_the_web_ports(host, inventory_vars):
    require_all_in_one(inventory_vars)
    # Every client of PostgreSQL, PgBouncer, Redis and the exporters is on this
    # host (loopback): no service port is open to the network.
    assert accepted_ports(nft_table(host)) == {22, 80, 443}


@pytest.mark.parametrize("how", ["reload", "restart"])
def test_docker_keeps_its_rules_when_nftables_reloads_or_restarts(host, inventory_vars, how):
    require_all_in_one(inventory_vars)
    before = set(host.run("nft list tables").stdout.split("\n")) - {""}
    assert "table ip nat" in before, before  # Docker's (iptables-nft)
    assert host.run(f"systemctl {how} nftables").rc == 0
    after = set(host.run("nft list tables").stdout.split("\n")) - {""}
    assert after == before
    assert host.run("nft list chain ip nat DOCKER").rc == 0
    # A container on Docker's bridge still reaches the outside through NAT and
    # the host's published service (the broker on loopback is reached by the
    # host-network app containers; the bridge needs Docker's masquerade rule).
    nat = host.run("nft list chain ip nat POSTROUTING").stdout
    assert "masquerade" in nat, nat
    assert chain(nft_table(host))["policy"] == "drop"


def test_health_reports_the_table(host):
    result = ansible_playbook("health.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    output = " ".join(result.stdout.split())
    assert "ok firewall table inet celery_stack: input chain type filter, hook input, policy drop" in output, output[-3000:]


def test_a_bad_rule_is_refused_before_any_change(host):
    before = host.file("/etc/nftables.d/celery-stack.nft").sha256sum
    bad = json.dumps({"celery_stack_admin_networks": ["10.0.0.300/8"]})
    result = ansible_playbook("site.yml", "--tags", "firewall", "-e", bad)
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    assert "firewall_ssh_sources" in output and "10.0.0.300/8" in output, output[-2000:]
    assert host.file("/etc/nftables.d/celery-stack.nft").sha256sum == before


def test_the_files_on_disk_pass_nft_check(host):
    for path in ("/etc/nftables.conf", "/etc/nftables.d/celery-stack.nft"):
        result = host.run(f"nft -c -f {path}")
        assert result.rc == 0, f"{path}: {result.stderr}"
