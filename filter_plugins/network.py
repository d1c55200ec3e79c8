"""Ansible filters about listen addresses, shared by the roles that bind services.

- ``address | celery_stack_address_scope``: ``loopback``, ``private``,
  ``public``, ``wildcard`` or ``invalid`` for one IP address (IPv4 or IPv6).
  Roles refuse ``wildcard`` and ``public`` for services that must stay on
  loopback or the private network (exporters, Prometheus, Alertmanager).
- ``hosts | celery_stack_peer_address(me, addresses)``: the address at which
  a client on host ``me`` reaches the server that runs on the first of
  ``hosts`` (an inventory group): loopback when ``me`` is one of them, else
  that host's private address (``addresses``: host -> celery_stack_private_address).
- ``servers | celery_stack_bad_servers``: the entries that are neither an IP
  address (not a wildcard) nor a DNS name.
- ``address | celery_stack_address_in(networks)``: whether the address lies
  in one of the networks (preflight: the controller keeps its SSH access).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable

from ansible.errors import AnsibleFilterError


def celery_stack_address_scope(address: Any) -> str:
    """Where an IP address is reachable from: loopback, private, public, wildcard or invalid."""
    try:
        ip = ipaddress.ip_address(str(address).strip("[]"))
    except ValueError:
        return "invalid"
    if ip.is_unspecified:
        return "wildcard"
    if ip.is_loopback:
        return "loopback"
    if ip.is_private or ip.is_link_local:
        return "private"
    return "public"


def celery_stack_peer_address(hosts: Any, me: str, addresses: dict[str, Any]) -> str:
    """Where a client on ``me`` reaches the service run by ``hosts``: loopback on its own host.

    Fails, naming the host, when the server is on another host without a
    ``celery_stack_private_address``, or when the group is empty.
    """
    hosts = list(hosts or [])
    if not hosts:
        raise AnsibleFilterError("no host runs this service: add one to its inventory group or set its *_endpoint variable")
    if me in hosts:
        return "127.0.0.1"
    address = addresses.get(hosts[0]) or ""
    if celery_stack_address_scope(address) in ("invalid", "wildcard"):
        raise AnsibleFilterError(
            f"{hosts[0]} serves {me} from another host but has no valid celery_stack_private_address ({address!r})"
        )
    return str(address)


def celery_stack_address_in(address: Any, networks: Any) -> bool:
    """Whether an IP address lies in one of ``networks`` (addresses or CIDRs); False for a non-address."""
    try:
        ip = ipaddress.ip_address(str(address).strip("[]"))
    except ValueError:
        return False
    for network in networks or []:
        try:
            if ip in ipaddress.ip_network(str(network), strict=False):
                return True
        except ValueError:
            continue
    return False


_DNS_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def celery_stack_bad_servers(servers: Any) -> list[str]:
    """The entries that are neither a usable IP address nor a DNS name (a managed endpoint may be either)."""
    bad = []
    for server in servers or []:
        text = str(server or "")
        scope = celery_stack_address_scope(text)
        looks_numeric = bool(re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:\[\]]*:[0-9A-Fa-f:\[\]]*", text))
        if scope == "wildcard" or (scope == "invalid" and (looks_numeric or not _DNS_NAME.match(text))):
            bad.append(text)
    return bad


class FilterModule:
    """celery-stack network filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "celery_stack_address_scope": celery_stack_address_scope,
            "celery_stack_peer_address": celery_stack_peer_address,
            "celery_stack_address_in": celery_stack_address_in,
            "celery_stack_bad_servers": celery_stack_bad_servers,
        }
