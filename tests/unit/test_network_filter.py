"""The address-scope filter the exporters and monitoring roles check listen addresses with."""

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("network", Path(__file__).parents[2] / "filter_plugins" / "network.py")
network = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(network)


@pytest.mark.parametrize(
    ("address", "scope"),
    [
        ("127.0.0.1", "loopback"),
        ("127.0.1.1", "loopback"),
        ("::1", "loopback"),
        ("[::1]", "loopback"),
        ("10.0.3.4", "private"),
        ("172.16.0.10", "private"),
        ("192.168.1.2", "private"),
        ("fd00::5", "private"),
        ("0.0.0.0", "wildcard"),
        ("::", "wildcard"),
        ("8.8.8.8", "public"),
        ("2001:4860::8888", "public"),
        ("localhost", "invalid"),
        ("", "invalid"),
        (None, "invalid"),
        ("10.0.0.1:9100", "invalid"),
    ],
)
def test_scope(address, scope):
    assert network.celery_stack_address_scope(address) == scope


def test_registered():
    assert "celery_stack_address_scope" in network.FilterModule().filters()


ADDRESSES = {"db1": "10.20.0.10", "broker1": "10.20.0.11", "web1": "10.20.0.12", "aio": ""}


def test_peer_address_is_loopback_on_the_servers_own_host():
    assert network.celery_stack_peer_address(["db1"], "db1", ADDRESSES) == "127.0.0.1"
    assert network.celery_stack_peer_address(["aio"], "aio", ADDRESSES) == "127.0.0.1"


def test_peer_address_is_the_first_servers_private_address_from_another_host():
    assert network.celery_stack_peer_address(["db1"], "web1", ADDRESSES) == "10.20.0.10"
    assert network.celery_stack_peer_address(["broker1", "db1"], "web1", ADDRESSES) == "10.20.0.11"


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([], "no host runs this service"),
        (["aio"], "aio serves web1 from another host but has no valid celery_stack_private_address"),
        (["ghost"], "ghost serves web1"),
    ],
)
def test_peer_address_refuses_a_server_it_cannot_reach(hosts, message):
    with pytest.raises(network.AnsibleFilterError, match=message):
        network.celery_stack_peer_address(hosts, "web1", {**ADDRESSES, "ghost": "0.0.0.0"})


@pytest.mark.parametrize(
    ("address", "networks", "inside"),
    [
        ("10.0.0.250", ["10.0.0.250/32"], True),
        ("10.0.0.7", ["10.0.0.0/24", "::/0"], True),
        ("10.0.1.7", ["10.0.0.0/24"], False),
        ("2001:db8::5", ["0.0.0.0/0"], False),
        ("2001:db8::5", ["::/0"], True),
        ("not-an-address", ["0.0.0.0/0"], False),
        ("10.0.0.7", ["bogus", "10.0.0.7"], True),
        ("10.0.0.7", [], False),
    ],
)
def test_address_in_networks(address, networks, inside):
    assert network.celery_stack_address_in(address, networks) is inside


def test_bad_servers_accepts_addresses_and_dns_names_only():
    good = ["127.0.0.1", "10.0.0.21", "mydb.abc123.eu-west-1.rds.amazonaws.com", "redis-1", "fd00::5"]
    bad = ["0.0.0.0", "::", "", "10.0.0.300", "bad_name.example", "-x.example", "a..b"]
    assert network.celery_stack_bad_servers(good + bad) == bad
