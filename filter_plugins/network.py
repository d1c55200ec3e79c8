"""Ansible filters about listen addresses, shared by the roles that bind services.

- ``address | celery_stack_address_scope``: ``loopback``, ``private``,
  ``public``, ``wildcard`` or ``invalid`` for one IP address (IPv4 or IPv6).
  Roles refuse ``wildcard`` and ``public`` for services that must stay on
  loopback or the private network (exporters, Prometheus, Alertmanager).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable


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


class FilterModule:
    """celery-stack network filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"celery_stack_address_scope": celery_stack_address_scope}
