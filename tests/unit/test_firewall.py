"""Role firewall: its filters (celery_stack/firewall.py), its files, and the nftables rules it renders.

The templates are rendered the way Ansible's template module renders them
(trim_blocks, no lstrip_blocks, undefined variables are errors), with
Ansible's core filters and the role's own. When ``nft`` is usable (root,
nftables installed) the rendered files are also checked with ``nft -c -f``
against the running kernel, and loaded in a throw-away network namespace
(``unshare --net``), which never touches this machine's firewall.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible.plugins.filter.core import FilterModule as CoreFilters

from celery_stack.firewall import check_firewall, firewall_rules, parse_source, port_number, split_families

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "firewall"
SPEC = importlib.util.spec_from_file_location("firewall_filters", ROOT / "filter_plugins" / "firewall.py")
filters = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(filters)

MANAGED = "Ansible managed: test_firewall.py"
DEFAULT_SSH = ["0.0.0.0/0", "::/0"]
WEB_PORTS = [{"port": 80, "proto": "tcp", "comment": "http"}, {"port": 443, "proto": "tcp", "comment": "https"}]

# ---------------------------------------------------------------- inventories

SERVICE_GROUPS = ("db", "pgbouncer", "broker", "cache", "web", "workers", "monitoring")
SERVICES = [
    {"name": "postgresql", "group": "db", "ports": [5432], "clients": ["pgbouncer", "monitoring"]},
    {"name": "pgbouncer", "group": "pgbouncer", "ports": [6432], "clients": ["web", "workers"]},
    {"name": "redis broker", "group": "broker", "ports": [6379], "clients": ["web", "workers", "monitoring"]},
    {"name": "redis cache", "group": "cache", "ports": [6380], "clients": ["web", "workers"]},
    {"name": "node exporter", "group": "all", "ports": [9100], "clients": ["monitoring"]},
    {"name": "flower", "group": "web", "ports": [5555, 9113], "clients": ["monitoring"]},
]
ALL_IN_ONE = {"all": ["aio"], **{group: ["aio"] for group in SERVICE_GROUPS}}
# db (with PgBouncer and monitoring), broker (with the cache), web, two workers.
SPLIT = {
    "all": ["db", "broker", "web", "worker1", "worker2"],
    "db": ["db"],
    "pgbouncer": ["db"],
    "monitoring": ["db"],
    "broker": ["broker"],
    "cache": ["broker"],
    "web": ["web"],
    "workers": ["worker1", "worker2"],
}
SPLIT_ADDRESSES = {
    "db": "10.0.0.2",
    "broker": "10.0.0.3",
    "web": "10.0.0.10",
    "worker1": "10.0.0.9",
    "worker2": "fd00::21",
}


# ---------------------------------------------------------------- split_families


def test_families_are_split_sorted_and_deduplicated() -> None:
    sources = ["10.0.0.10", "fd00::2", "10.0.0.9", "192.168.1.0/24", "10.0.0.9", "fd00::1", "2001:db8::/32"]
    assert split_families(sources) == {
        "ip": ["10.0.0.9", "10.0.0.10", "192.168.1.0/24"],
        "ip6": ["2001:db8::/32", "fd00::1", "fd00::2"],
    }


@pytest.mark.parametrize(
    ("source", "normalised"),
    [
        ("10.0.0.5", "10.0.0.5"),
        (" 10.0.0.5 ", "10.0.0.5"),
        ("10.0.0.5/32", "10.0.0.5"),
        ("10.0.0.5/24", "10.0.0.0/24"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("FD00:0::0001", "fd00::1"),
        ("fd00::1/128", "fd00::1"),
        ("fd00::1/64", "fd00::/64"),
    ],
)
def test_families_normalise(source: str, normalised: str) -> None:
    result = split_families([source])
    assert result["ip" if "." in normalised else "ip6"] == [normalised]


def test_families_drop_entries_another_one_covers() -> None:
    assert split_families(["10.0.0.5", "10.0.0.0/24", "10.0.1.1", "10.0.0.0/25"]) == {
        "ip": ["10.0.0.0/24", "10.0.1.1"],
        "ip6": [],
    }
    assert split_families(["0.0.0.0/0", "10.0.0.1", "::/0", "fd00::1"]) == {"ip": ["0.0.0.0/0"], "ip6": ["::/0"]}
    # IPv4 never covers IPv6
    assert split_families(["0.0.0.0/0", "fd00::1"]) == {"ip": ["0.0.0.0/0"], "ip6": ["fd00::1"]}


def test_families_of_nothing() -> None:
    assert split_families([]) == split_families(None) == {"ip": [], "ip6": []}


@pytest.mark.parametrize("source", ["db.example.com", "10.0.0.256", "10.0.0.0/33", "fe80::1%eth0", "", 10, None, True])
def test_families_refuse_what_is_not_an_address(source: Any) -> None:
    with pytest.raises(ValueError, match="not"):
        split_families([source])


def test_families_refuse_a_string() -> None:
    with pytest.raises(ValueError, match="not a list"):
        split_families("10.0.0.1")


def test_parse_source_and_port_number() -> None:
    assert str(parse_source("10.1.2.3/8")) == "10.0.0.0/8"
    assert [port_number(value) for value in (1, 65535, "22", " 443 ")] == [1, 65535, 22, 443]
    assert [port_number(value) for value in (0, 65536, -1, "x", "22/tcp", 22.0, True, None)] == [None] * 8


# ---------------------------------------------------------------- check_firewall

GOOD_RULES = [
    {"name": "postgresql", "ports": [5432], "proto": "tcp", "sources": ["10.0.0.3", "fd00::21"]},
    {"name": "pgbouncer", "ports": [6432, "9127"], "sources": ["10.0.0.0/24"]},
    {"name": "statsd", "ports": [8125], "proto": "udp", "sources": []},
]


def test_good_inputs_have_no_errors() -> None:
    assert check_firewall(DEFAULT_SSH, WEB_PORTS, GOOD_RULES, 22) == []
    assert check_firewall([], [], [], 2222) == []
    assert check_firewall(["10.8.0.0/24"], [{"port": "8443"}, {"port": 53, "proto": "udp"}], [], None) == []
    # the same port may be public for one protocol and restricted for the other
    dns = [{"name": "dns", "ports": [53], "sources": ["10.0.0.1"]}]
    assert check_firewall([], [{"port": 53, "proto": "udp"}], dns) == []


@pytest.mark.parametrize(
    ("ssh_sources", "public_ports", "rules", "ssh_port", "expected"),
    [
        (DEFAULT_SSH, [], [], 0, "firewall_ssh_port=0"),
        (DEFAULT_SSH, [], [], "ssh", "firewall_ssh_port='ssh'"),
        ("0.0.0.0/0", [], [], 22, "firewall_ssh_sources='0.0.0.0/0': a list"),
        (["10.0.0.0/8", "bastion.example.com"], [], [], 22, "firewall_ssh_sources: 'bastion.example.com' is not"),
        (DEFAULT_SSH, {"port": 80}, [], 22, "firewall_public_ports={'port': 80}: a list"),
        (DEFAULT_SSH, ["80"], [], 22, "firewall_public_ports[0]='80': a dict"),
        (DEFAULT_SSH, [{"port": 70000}], [], 22, "firewall_public_ports[0].port=70000"),
        (DEFAULT_SSH, [{"port": 80, "proto": "sctp"}], [], 22, "firewall_public_ports[0].proto='sctp': tcp or udp"),
        (DEFAULT_SSH, [{"port": 80, "comment": 'say "hi"'}], [], 22, "firewall_public_ports[0].comment='say \"hi\"'"),
        (DEFAULT_SSH, [{"port": 80, "protocol": "tcp"}], [], 22, "firewall_public_ports[0]: unknown keys ['protocol']"),
        (DEFAULT_SSH, [{"port": 80}, {"port": 80, "proto": "tcp"}], [], 22,
         "firewall_public_ports[1]: 80/tcp is already in firewall_public_ports[0]"),
        (DEFAULT_SSH, [{"port": 22}], [], 22, "firewall_public_ports[0]: 22/tcp is the SSH port"),
        (DEFAULT_SSH, [], {"name": "x"}, 22, "firewall_rules={'name': 'x'}: a list"),
        (DEFAULT_SSH, [], ["postgresql"], 22, "firewall_rules[0]='postgresql': a dict"),
        (DEFAULT_SSH, [], [{"ports": [5432], "sources": []}], 22, "firewall_rules[0].name=None"),
        (DEFAULT_SSH, [], [{"name": "pg\nsql", "ports": [5432]}], 22, "firewall_rules[0].name='pg\\nsql'"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": [5432], "sources": [], "source": ["10.0.0.1"]}], 22,
         "firewall_rules[0] (pg): unknown keys ['source']"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": [5432]}, {"name": "pg", "ports": [6432]}], 22,
         "firewall_rules[1] (pg): the name 'pg' is already used by firewall_rules[0]"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": []}], 22, "firewall_rules[0] (pg).ports=[]: a non-empty list"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": 5432}], 22, "firewall_rules[0] (pg).ports=5432: a non-empty list"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": [5432, 0]}], 22, "firewall_rules[0] (pg).ports: 0 is not a port"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": [True]}], 22, "firewall_rules[0] (pg).ports: True is not a port"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": [5432], "proto": "icmp"}], 22, "firewall_rules[0] (pg).proto='icmp'"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": [5432], "sources": "10.0.0.1"}], 22,
         "firewall_rules[0] (pg).sources='10.0.0.1': a list"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": [5432], "sources": ["10.0.0.300"]}], 22,
         "firewall_rules[0] (pg).sources: '10.0.0.300' is not an IPv4/IPv6 address or CIDR"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": [5432], "sources": ["10.0.0.1", "0.0.0.0/0"]}], 22,
         "firewall_rules[0] (pg).sources: '0.0.0.0/0' opens the service to every address"),
        (DEFAULT_SSH, [], [{"name": "pg", "ports": [5432], "sources": ["::/0"]}], 22,
         "firewall_rules[0] (pg).sources: '::/0' opens the service to every address"),
        (DEFAULT_SSH, WEB_PORTS, [{"name": "web", "ports": [8080, 443], "sources": ["10.0.0.1"]}], 22,
         "firewall_rules[0] (web): 443/tcp is also in firewall_public_ports (firewall_public_ports[1])"),
        (DEFAULT_SSH, [{"port": "53", "proto": "udp"}],
         [{"name": "dns", "ports": [53], "proto": "udp", "sources": ["10.0.0.1"]}], 22,
         "firewall_rules[0] (dns): 53/udp is also in firewall_public_ports"),
    ],
)
def test_each_error_names_the_variable_and_the_value(
    ssh_sources: Any, public_ports: Any, rules: Any, ssh_port: Any, expected: str
) -> None:
    errors = check_firewall(ssh_sources, public_ports, rules, ssh_port)
    assert any(expected in error for error in errors), errors


def test_errors_are_all_reported_at_once() -> None:
    errors = check_firewall(
        ["x"],
        [{"port": 0}],
        [{"name": "a", "ports": [1], "sources": ["0.0.0.0/0"]}, {"name": "a", "ports": [2], "proto": "gre"}],
        99999,
    )
    assert len(errors) == 6, errors


# ---------------------------------------------------------------- firewall_rules from the inventory


def test_all_in_one_has_no_source_anywhere() -> None:
    rules = firewall_rules("aio", ALL_IN_ONE, {"aio": None}, SERVICES)
    assert [rule["name"] for rule in rules] == [service["name"] for service in SERVICES]
    assert all(rule["sources"] == [] for rule in rules)
    assert rules[0] == {"name": "postgresql", "ports": [5432], "proto": "tcp", "sources": []}
    # even with a private address: every client is the host itself
    assert all(rule["sources"] == [] for rule in firewall_rules("aio", ALL_IN_ONE, {"aio": "10.0.0.2"}, SERVICES))


def test_split_inventory_db_host() -> None:
    rules = {rule["name"]: rule for rule in firewall_rules("db", SPLIT, SPLIT_ADDRESSES, SERVICES)}
    assert list(rules) == ["postgresql", "pgbouncer", "node exporter"]
    # PgBouncer and monitoring hosts, minus the db host itself (it is both)
    assert rules["postgresql"]["sources"] == []
    assert rules["pgbouncer"]["sources"] == ["10.0.0.9", "10.0.0.10", "fd00::21"]
    assert rules["node exporter"]["sources"] == []


def test_split_inventory_other_hosts() -> None:
    broker = firewall_rules("broker", SPLIT, SPLIT_ADDRESSES, SERVICES)
    assert [(rule["name"], rule["ports"], rule["sources"]) for rule in broker] == [
        ("redis broker", [6379], ["10.0.0.2", "10.0.0.9", "10.0.0.10", "fd00::21"]),
        ("redis cache", [6380], ["10.0.0.9", "10.0.0.10", "fd00::21"]),
        ("node exporter", [9100], ["10.0.0.2"]),
    ]
    web = firewall_rules("web", SPLIT, SPLIT_ADDRESSES, SERVICES)
    assert [(rule["name"], rule["ports"], rule["sources"]) for rule in web] == [
        ("node exporter", [9100], ["10.0.0.2"]),
        ("flower", [5555, 9113], ["10.0.0.2"]),
    ]
    assert firewall_rules("worker1", SPLIT, SPLIT_ADDRESSES, SERVICES) == [
        {"name": "node exporter", "ports": [9100], "proto": "tcp", "sources": ["10.0.0.2"]}
    ]


def test_postgresql_sources_are_pgbouncer_and_monitoring_hosts_minus_itself() -> None:
    groups = {**SPLIT, "pgbouncer": ["db", "web"], "monitoring": ["db", "mon"], "all": [*SPLIT["all"], "mon"]}
    addresses = {**SPLIT_ADDRESSES, "mon": "10.0.0.50"}
    postgresql = firewall_rules("db", groups, addresses, SERVICES)[0]
    assert postgresql == {"name": "postgresql", "ports": [5432], "proto": "tcp", "sources": ["10.0.0.10", "10.0.0.50"]}


def test_rules_skip_hosts_without_address_and_unknown_groups() -> None:
    services = [
        {"name": "pgbouncer", "group": "pgbouncer", "ports": [6432], "clients": ["web", "workers", "nope"]},
        {"name": "syslog", "group": "db", "ports": [514], "proto": "udp", "clients": ["all"]},
    ]
    addresses = {**SPLIT_ADDRESSES, "web": "", "worker1": None}
    assert firewall_rules("db", SPLIT, addresses, services) == [
        {"name": "pgbouncer", "ports": [6432], "proto": "tcp", "sources": ["fd00::21"]},
        {"name": "syslog", "ports": [514], "proto": "udp", "sources": ["10.0.0.3", "fd00::21"]},
    ]
    assert firewall_rules("nobody", SPLIT, addresses, services) == []


def test_computed_rules_pass_the_checks() -> None:
    for host in SPLIT["all"]:
        rules = firewall_rules(host, SPLIT, SPLIT_ADDRESSES, SERVICES)
        assert check_firewall(DEFAULT_SSH, WEB_PORTS if host == "web" else [], rules, 22) == []


# ---------------------------------------------------------------- the filter plugin


def test_filters_are_registered() -> None:
    registered = filters.FilterModule().filters()
    assert set(registered) == {
        "celery_stack_firewall_families",
        "celery_stack_firewall_errors",
        "celery_stack_firewall_rules",
    }
    assert registered["celery_stack_firewall_errors"] is check_firewall
    assert registered["celery_stack_firewall_rules"] is firewall_rules
    assert registered["celery_stack_firewall_families"](["fd00::1", "10.0.0.1"]) == {"ip": ["10.0.0.1"], "ip6": ["fd00::1"]}


def test_families_filter_raises_an_ansible_error() -> None:
    with pytest.raises(AnsibleFilterError, match="celery_stack_firewall_families: 'db.example.com'"):
        filters.celery_stack_firewall_families(["db.example.com"])


# ---------------------------------------------------------------- role files


def _yaml(path: str) -> Any:
    return yaml.safe_load((ROLE / path).read_text())


def test_argument_specs_document_every_default() -> None:
    defaults = _yaml("defaults/main.yml")
    specs = _yaml("meta/argument_specs.yml")["argument_specs"]
    assert specs["main"] == specs["assert"]
    options = specs["main"]["options"]
    assert list(options) == list(defaults)
    for name, option in options.items():
        assert option["description"], name
        assert option["default"] == defaults[name], name
    readme = (ROLE / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in defaults)


def test_defaults_pass_the_checks() -> None:
    defaults = _yaml("defaults/main.yml")
    ssh_sources, rules, ssh_port = (defaults[f"firewall_{name}"] for name in ("ssh_sources", "rules", "ssh_port"))
    assert check_firewall(ssh_sources, WEB_PORTS, rules, ssh_port) == []
    assert defaults["firewall_input_policy"] in _yaml("meta/argument_specs.yml")["argument_specs"]["main"]["options"][
        "firewall_input_policy"
    ]["choices"]


def test_public_ports_default_opens_http_and_https_on_web_hosts_only() -> None:
    expression = _yaml("defaults/main.yml")["firewall_public_ports"]
    template = jinja2.Environment().from_string(expression)
    assert template.render(group_names=["web", "workers"]) == str(WEB_PORTS)
    assert template.render(group_names=["db"]) == "[]"


def test_templates_carry_ansible_managed_and_no_flush() -> None:
    for path in sorted((ROLE / "templates").glob("*.j2")):
        text = path.read_text()
        assert "{{ ansible_managed }}" in text.splitlines()[1] or "{{ ansible_managed }}" in text.splitlines()[0], path
        assert "flush ruleset" not in re.sub(r"#.*", "", text), path


def test_every_module_is_fully_qualified() -> None:
    for path in sorted((ROLE / "tasks").glob("*.yml")) + [ROLE / "handlers" / "main.yml"]:
        for task in yaml.safe_load(path.read_text()) or []:
            modules = [key for key in task if "." in key]
            assert len(modules) == 1 and modules[0].startswith("ansible.builtin."), (path, task.get("name"))


# ---------------------------------------------------------------- rendering


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=False,
        keep_trailing_newline=True,
    )
    # Ansible's filters that Jinja lacks (bool, ...); Jinja's own (default, map) stay: Ansible's
    # versions expect Ansible's templating engine.
    env.filters.update({name: function for name, function in CoreFilters().filters().items() if name not in env.filters})
    env.filters.update(filters.FilterModule().filters())
    return env


def variables(**overrides: Any) -> dict[str, Any]:
    """The role's defaults and internals (firewall_public_ports as on a web host), with overrides."""
    values = {**_yaml("defaults/main.yml"), **_yaml("vars/main.yml")}
    values["firewall_public_ports"] = WEB_PORTS
    values.update(overrides)
    return values


def render(template: str, **overrides: Any) -> str:
    return environment().get_template(template).render(ansible_managed=MANAGED, **variables(**overrides))


def body(text: str) -> list[str]:
    """The rule lines of the input chain (no comments, no blank lines)."""
    chain = text.split("chain input {", 1)[1]
    return [line.strip() for line in chain.splitlines() if line.strip() and not line.strip().startswith("#")]


SPLIT_RULES = firewall_rules("broker", SPLIT, SPLIT_ADDRESSES, SERVICES) + [
    {"name": "statsd", "ports": [8125, 8125], "proto": "udp", "sources": ["10.0.0.0/24", "10.0.0.7", "fd00::/64"]},
]
VARIANTS: dict[str, dict[str, Any]] = {
    "split": {
        "firewall_rules": SPLIT_RULES,
        "firewall_ssh_sources": ["198.51.100.0/24", "2001:db8:1::/48", "198.51.100.7"],
    },
    "all_in_one": {
        "firewall_rules": firewall_rules("aio", ALL_IN_ONE, {"aio": None}, SERVICES),
        "firewall_public_ports": [],
    },
    "dry_run": {
        "firewall_rules": SPLIT_RULES,
        "firewall_input_policy": "accept",
        "firewall_log_dropped": True,
        "firewall_ssh_sources": [],
        "firewall_table": "cs_test",
    },
}


def test_split_host_rules_in_order() -> None:
    text = render("celery-stack.nft.j2", **VARIANTS["split"])
    lines = text.splitlines()
    assert lines[0] == "#!/usr/sbin/nft -f" and lines[1] == f"# {MANAGED}"
    code = [line for line in lines if line and not line.startswith("#")]
    assert code[:3] == ["table inet celery_stack {}", "delete table inet celery_stack", "table inet celery_stack {"]
    rules = body(text)
    assert rules[0] == "type filter hook input priority filter; policy drop;"
    assert rules[1].startswith('iif "lo" accept')
    assert rules[2].startswith("ct state established,related accept")
    assert rules[3].startswith("ct state invalid drop")
    assert rules[4].startswith("icmp type echo-request limit rate 10/second accept")
    assert rules[5] == (
        'icmp type { destination-unreachable, time-exceeded, parameter-problem } accept comment "ICMP errors"'
    )
    assert rules[6].startswith("icmpv6 type echo-request limit rate 10/second accept")
    for icmpv6 in ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert", "packet-too-big"):
        assert icmpv6 in rules[7]
    assert rules[8].startswith("ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept")
    assert rules[9:] == [
        'ip saddr 198.51.100.0/24 tcp dport 22 accept comment "ssh"',
        'ip6 saddr 2001:db8:1::/48 tcp dport 22 accept comment "ssh"',
        'tcp dport 80 accept comment "http"',
        'tcp dport 443 accept comment "https"',
        'ip saddr { 10.0.0.2, 10.0.0.9, 10.0.0.10 } tcp dport 6379 accept comment "redis broker"',
        'ip6 saddr fd00::21 tcp dport 6379 accept comment "redis broker"',
        'ip saddr { 10.0.0.9, 10.0.0.10 } tcp dport 6380 accept comment "redis cache"',
        'ip6 saddr fd00::21 tcp dport 6380 accept comment "redis cache"',
        'ip saddr 10.0.0.2 tcp dport 9100 accept comment "node exporter"',
        'ip saddr 10.0.0.0/24 udp dport 8125 accept comment "statsd"',
        'ip6 saddr fd00::/64 udp dport 8125 accept comment "statsd"',
        "}",
        "}",
    ]
    assert "log prefix" not in text and "chain forward" not in text and "chain output" not in text


def test_all_in_one_opens_no_service_port() -> None:
    text = render("celery-stack.nft.j2", **VARIANTS["all_in_one"])
    for service in SERVICES:
        assert f"# {service['name']}: no client host, tcp {', '.join(map(str, service['ports']))} closed" in text
    opened = [line for line in body(text) if "dport" in line]
    assert [line for line in opened if "tcp dport 22 " not in line and "udp sport 547" not in line] == []
    assert "# Public ports" not in text


def test_dry_run_accepts_and_logs_at_the_end() -> None:
    text = render("celery-stack.nft.j2", **VARIANTS["dry_run"])
    rules = body(text)
    assert rules[0] == "type filter hook input priority filter; policy accept;"
    assert rules[-3] == 'limit rate 5/minute log prefix "celery-stack-drop: " comment "log what the policy (accept) gets"'
    assert "# ssh: firewall_ssh_sources is empty, tcp 22 closed" in text
    assert not [line for line in rules if "dport 22 " in line]
    assert "table inet cs_test {}\ndelete table inet cs_test\n" in text


def test_a_rule_with_a_single_family_has_a_single_line() -> None:
    rule = {"name": "pg", "ports": [5432, "6432"], "sources": ["fd00::5", "fd00::4"]}
    text = render("celery-stack.nft.j2", firewall_rules=[rule])
    assert [line for line in body(text) if '"pg"' in line] == [
        'ip6 saddr { fd00::4, fd00::5 } tcp dport { 5432, 6432 } accept comment "pg"'
    ]


def test_nftables_conf_includes_the_rules_and_never_flushes() -> None:
    text = render("nftables.conf.j2")
    lines = text.splitlines()
    assert lines[0] == "#!/usr/sbin/nft -f" and lines[1] == f"# {MANAGED}"
    assert [line for line in lines if not line.startswith("#")] == ['include "/etc/nftables.d/*.nft"']


def test_dropin_replaces_the_flush_on_stop() -> None:
    text = render("nftables-dropin.conf.j2", firewall_table="cs_test")
    assert [line for line in text.splitlines() if line and not line.startswith("#")] == [
        "[Service]",
        "ExecStop=",
        "ExecStop=-/usr/sbin/nft delete table inet cs_test",
    ]


# ---------------------------------------------------------------- nft itself


@pytest.fixture(scope="module")
def nft(tmp_path_factory: pytest.TempPathFactory) -> str:
    """nft, when it can check a ruleset against this kernel (root, nftables installed)."""
    path = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if path is None:
        pytest.skip("nft is not installed (Debian: apt-get install nftables); the converged host validates the files")
    probe = tmp_path_factory.mktemp("probe") / "probe.nft"
    probe.write_text("table inet celery_stack_probe {}\ndelete table inet celery_stack_probe\n")
    result = subprocess.run([path, "-c", "-f", str(probe)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"nft -c cannot run here (needs root / CAP_NET_ADMIN): {result.stderr.strip()}")
    return path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nft_checks_the_rendered_files(nft: str, variant: str, tmp_path: Path) -> None:
    rules_dir = tmp_path / "nftables.d"
    rules_dir.mkdir()
    rules = rules_dir / "celery-stack.nft"
    rules.write_text(render("celery-stack.nft.j2", **VARIANTS[variant]))
    conf = tmp_path / "nftables.conf"
    conf.write_text(render("nftables.conf.j2", __firewall_rules_dir=str(rules_dir)))
    for path in (rules, conf):
        result = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"nft -c -f {path.name} ({variant}):\n{result.stderr}\n{path.read_text()}"


def test_nft_refuses_a_broken_file(nft: str, tmp_path: Path) -> None:
    """The validation the role relies on does fail: a typo in a rule is refused."""
    broken = tmp_path / "broken.nft"
    broken.write_text(render("celery-stack.nft.j2").replace("tcp dport 80 accept", "tcp dport 80 acept"))
    assert subprocess.run([nft, "-c", "-f", str(broken)], capture_output=True, timeout=30).returncode != 0


DOCKER_LIKE = """table ip nat {
    chain POSTROUTING {
        type nat hook postrouting priority srcnat; policy accept;
        oifname != "docker0" ip saddr 172.17.0.0/16 counter masquerade
    }
}
table ip filter {
    chain FORWARD {
        type filter hook forward priority filter; policy drop;
    }
}
"""


def test_loading_replaces_only_the_roles_table(nft: str, tmp_path: Path) -> None:
    """In a throw-away network namespace: load next to Docker-like tables twice, then stop as the drop-in does."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    docker = tmp_path / "docker.nft"
    docker.write_text(DOCKER_LIKE)
    rules = tmp_path / "celery-stack.nft"
    rules.write_text(render("celery-stack.nft.j2", **VARIANTS["split"]))
    script = (
        f"{nft} -f {docker} && {nft} -f {rules} && {nft} -j list ruleset && echo @@ && "
        f"{nft} -f {rules} && {nft} -j list ruleset && echo @@ && "
        f"{nft} delete table inet celery_stack && {nft} -j list ruleset"
    )
    result = subprocess.run(["unshare", "--net", "sh", "-ec", script], capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "unshare" in result.stderr and "ermission" in result.stderr:
        pytest.skip(f"no network namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    first, second, stopped = (json.loads(part)["nftables"] for part in result.stdout.split("@@"))

    def tables(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return sorted((item["table"]["family"], item["table"]["name"]) for item in items if "table" in item)

    def rule_count(items: list[dict[str, Any]], table: str) -> int:
        return sum(1 for item in items if "rule" in item and item["rule"]["table"] == table)

    assert tables(first) == tables(second) == [("inet", "celery_stack"), ("ip", "filter"), ("ip", "nat")]
    assert rule_count(first, "celery_stack") == rule_count(second, "celery_stack") == len(body(rules.read_text())) - 3
    assert rule_count(second, "nat") == 1
    chain = next(item["chain"] for item in second if "chain" in item and item["chain"]["table"] == "celery_stack")
    assert (chain["name"], chain["type"], chain["hook"], chain["policy"]) == ("input", "filter", "input", "drop")
    assert tables(stopped) == [("ip", "filter"), ("ip", "nat")]
    comments = {item["rule"].get("comment") for item in second if "rule" in item}
    assert {"ssh", "redis broker", "redis cache", "node exporter", "statsd", "http", "https"} <= comments
