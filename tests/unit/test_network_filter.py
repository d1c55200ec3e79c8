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
