"""playbooks/vars/network.yml resolved by Ansible itself for real inventories (no host is contacted).

Each case runs `ansible all -c local -m debug` with the wiring files as the
playbooks load them, on inventories/split and on variants of it: the
addresses every client uses, PostgreSQL's client networks, the firewall's
rules, and the managed-service endpoints that replace an empty group.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "inventories" / "split"
EXPRESSION = (
    "{{ {'database': app_database_host, 'pgbouncer_databases': pgbouncer_databases, 'broker': app_broker_host,"
    " 'cache': app_result_backend_host, 'hba': postgresql_hba_networks, 'postgresql_listen': postgresql_listen_addresses,"
    " 'pgbouncer_listen': pgbouncer_listen_addresses, 'redis_bind': redis_bind, 'flower': app_flower_address,"
    " 'locations': nginx_protected_locations, 'firewall': firewall_rules, 'public': firewall_public_ports,"
    " 'ssh': firewall_ssh_sources, 'nonlocal_bind': common_nonlocal_bind,"
    " 'bad': ((pgbouncer_databases | map(attribute='host') | list)"
    " + [app_database_host, app_broker_host, app_result_backend_host]) | celery_stack_bad_servers} | to_json }}"
)

pytestmark = pytest.mark.skipif(shutil.which("ansible", path=str(ROOT / ".venv" / "bin")) is None, reason="no venv ansible")


def resolve(inventory: Path) -> dict[str, dict]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_DEPRECATION_WARNINGS": "0"}
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible"), "all", "-i", str(inventory), "-c", "local",
         "-e", "@" + str(ROOT / "playbooks" / "vars" / "network.yml"),
         "-e", "@" + str(ROOT / "playbooks" / "vars" / "monitoring.yml"),
         "-m", "ansible.builtin.debug", "-a", f"msg={EXPRESSION}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tasks = json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]
    return {name: json.loads(answer["msg"]) for name, answer in tasks.items()}


def rules(view: dict) -> dict[str, list[str]]:
    return {rule["name"]: rule["sources"] for rule in view["firewall"]}


@pytest.fixture(scope="module")
def split() -> dict[str, dict]:
    return resolve(SPLIT)


def test_clients_find_their_servers_from_the_groups(split):
    web, worker, db = split["web1.example.com"], split["worker1.example.com"], split["db1.example.com"]
    for view in (web, worker):
        assert view["database"] == "127.0.0.1"  # their own PgBouncer
        assert view["pgbouncer_databases"] == [{"name": "app", "host": "10.0.0.21", "port": 5432}]
        assert (view["broker"], view["cache"]) == ("10.0.0.22", "10.0.0.22")
        assert view["pgbouncer_listen"] == ["127.0.0.1"]
    assert db["postgresql_listen"] == ["127.0.0.1", "10.0.0.21"]
    assert split["broker1.example.com"]["redis_bind"] == ["127.0.0.1", "10.0.0.22", "-::1"]
    # PostgreSQL: the three PgBouncer hosts (monitoring is the db host itself: loopback).
    assert sorted(db["hba"]) == ["10.0.0.23/32", "10.0.0.24/32", "10.0.0.25/32"]
    # nginx on the web host: Flower on the first workers host (next to beat, where the plan
    # budgets it), Prometheus on the db host.
    upstreams = {location["name"]: location["upstream"] for location in web["locations"]}
    assert upstreams["flower"] == "10.0.0.24:5555" and upstreams["prometheus"] == "10.0.0.21:9090"
    assert worker["flower"] == "10.0.0.24"


def test_firewall_rules_follow_the_groups(split):
    db = rules(split["db1.example.com"])
    assert db["postgresql"] == ["10.0.0.23", "10.0.0.24", "10.0.0.25"]
    assert db["prometheus_alertmanager"] == ["10.0.0.23"]
    assert db["exporter_node"] == []  # the monitoring host scrapes itself over loopback
    broker = rules(split["broker1.example.com"])
    # Web and workers hosts: the exporters read Redis over loopback, monitoring never needs it.
    assert broker["redis_broker"] == ["10.0.0.23", "10.0.0.24", "10.0.0.25"]
    assert broker["exporter_redis"] == ["10.0.0.21"]
    worker = rules(split["worker1.example.com"])
    # App-host PgBouncers listen on loopback: no 6432 rule on them.
    assert "pgbouncer" not in worker and "postgresql" not in worker and "redis_broker" not in worker
    assert worker["exporter_node"] == ["10.0.0.21"] and worker["exporter_pgbouncer"] == ["10.0.0.21"]
    # Flower's port on its host only, from the monitoring and web hosts.
    assert worker["flower"] == ["10.0.0.21", "10.0.0.23"]
    assert "flower" not in rules(split["worker2.example.com"]) and "flower" not in rules(split["web1.example.com"])
    assert split["web1.example.com"]["public"] == [
        {"port": 80, "proto": "tcp", "comment": "http"}, {"port": 443, "proto": "tcp", "comment": "https"}]
    assert split["worker1.example.com"]["public"] == []
    assert all(view["ssh"] == ["10.0.0.250/32"] for view in split.values())
    assert all(view["nonlocal_bind"] is True for view in split.values())


def test_the_inventory_adds_rules_through_the_hook(tmp_path):
    def extra(hosts):
        hosts["all"]["hosts"]["db1.example.com"]["celery_stack_firewall_extra_rules"] = [
            {"name": "replica", "ports": [5432], "sources": ["10.0.0.30"]}]
    views = resolve(_variant(tmp_path, extra))
    assert rules(views["db1.example.com"])["replica"] == ["10.0.0.30"]
    assert "replica" not in rules(views["web1.example.com"])


def _variant(tmp_path: Path, edit) -> Path:
    inventory = tmp_path / "inventory"
    shutil.copytree(SPLIT, inventory, symlinks=False)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    edit(hosts)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return inventory


def test_managed_postgresql_and_redis_replace_their_groups(tmp_path):
    def managed(hosts):
        for group in ("db", "broker", "cache"):
            hosts["all"]["children"][group] = {"hosts": {}}
        hosts["all"]["vars"].update({
            "celery_stack_database_endpoint": {"host": "mydb.example.net", "port": 5433},
            "celery_stack_broker_endpoint": {"host": "10.0.0.40", "port": 6379},
            "celery_stack_cache_endpoint": {"host": "10.0.0.41", "port": 6390},
        })
    views = resolve(_variant(tmp_path, managed))
    worker = views["worker1.example.com"]
    assert worker["pgbouncer_databases"] == [{"name": "app", "host": "mydb.example.net", "port": 5433}]
    assert (worker["broker"], worker["cache"]) == ("10.0.0.40", "10.0.0.41")
    assert worker["database"] == "127.0.0.1"
    # What preflight checks: a DNS name is a valid endpoint (verify-full needs it).
    assert all(view["bad"] == [] for view in views.values())
    # No host runs PostgreSQL or Redis: no rule opens their ports anywhere.
    assert not {"postgresql", "redis_broker", "redis_cache"} & {name for view in views.values() for name in rules(view)}


def test_a_server_on_another_host_without_a_private_address_is_refused(tmp_path):
    def forget(hosts):
        del hosts["all"]["hosts"]["broker1.example.com"]["celery_stack_private_address"]
    with pytest.raises(AssertionError, match="broker1.example.com serves worker1.example.com from another host"):
        resolve(_variant(tmp_path, forget))


def test_the_all_in_one_inventory_stays_on_loopback():
    view = resolve(ROOT / "inventories" / "production")["app1.example.com"]
    assert view["database"] == view["broker"] == view["cache"] == "127.0.0.1"
    assert view["pgbouncer_databases"][0]["host"] == "127.0.0.1"
    assert view["postgresql_listen"] == view["pgbouncer_listen"] == ["127.0.0.1"]
    assert view["hba"] == [] and all(rule["sources"] == [] for rule in view["firewall"])
    assert view["nonlocal_bind"] is False and view["bad"] == []
