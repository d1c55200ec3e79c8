"""The host firewall (role firewall): source addresses, input checks and service rules from the inventory.

Role ``firewall`` writes one nftables table (``table inet celery_stack``)
whose input chain accepts, besides loopback, replies, ICMP and SSH:

- ``firewall_public_ports``: ``{port, proto, comment}`` from anywhere;
- ``firewall_rules``: ``{name, ports, proto, sources}``, a service reachable
  only from the addresses or networks in ``sources`` (an empty list opens
  nothing: the service has no client on another host).

This module gives the role what Jinja cannot do well:

- :func:`split_families`: a list of sources as the ``ip saddr { ... }`` and
  ``ip6 saddr { ... }`` sets of a rule (the families must be matched apart);
- :func:`check_firewall`: every problem of the inputs, as messages naming
  the variable and the value (the role's tasks/assert.yml fails with them);
- :func:`firewall_rules`: the ``firewall_rules`` of one host computed from
  the inventory (``groups``, each host's private address, and which group
  serves which ports to which client groups).

Standard library only: importable without Ansible (filter_plugins/firewall.py
exposes the three functions as filters).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable, Mapping, Sequence, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTOCOLS = ("tcp", "udp")
FAMILIES = {4: "ip", 6: "ip6"}
PORT_MIN, PORT_MAX = 1, 65535
# Rule names and comments end up in `comment "..."` (at most 128 bytes in
# nftables) and in `#` comments of the rules file: one line, no quote.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.,:/()+-]{0,63}")
NAME_RULE = "1-64 characters: letters, digits, spaces and _ . , : / ( ) + -, starting with a letter or digit"
PUBLIC_PORT_KEYS = frozenset({"port", "proto", "comment"})
RULE_KEYS = frozenset({"name", "ports", "proto", "sources"})


def parse_source(source: Any) -> Network:
    """One source as a network: ``10.0.0.5`` is ``10.0.0.5/32``, ``10.0.0.5/24`` is ``10.0.0.0/24``.

    Raises ValueError for anything that is not an IPv4 or IPv6 address or
    CIDR written as a string (host names and zone indexes like ``fe80::1%eth0``
    included: nftables matches neither).
    """
    if not isinstance(source, str):
        raise ValueError(f"{source!r} is not a string")
    text = source.strip()
    if not text or "%" in text:
        raise ValueError(f"{source!r} is not an IPv4/IPv6 address or CIDR")
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{source!r} is not an IPv4/IPv6 address or CIDR") from None


def _text(network: Network) -> str:
    """A network as nftables lists it: a single address without its /32 or /128."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _sort_key(network: Network) -> tuple[int, int, int]:
    return (network.version, int(network.network_address), network.prefixlen)


def split_families(sources: Iterable[Any] | None) -> dict[str, list[str]]:
    """``{"ip": [...], "ip6": [...]}``: the sources of one rule, per address family.

    Each list is normalised (host bits of a CIDR cleared, /32 and /128
    written as plain addresses), de-duplicated, stripped of entries that
    another entry already covers (``10.0.0.5`` next to ``10.0.0.0/24``:
    nftables would merge them anyway) and sorted by address. Raises
    ValueError on an invalid source (the role checks them first, see
    :func:`check_firewall`).
    """
    if sources is None:
        sources = []
    if isinstance(sources, (str, bytes, Mapping)):
        raise ValueError(f"{sources!r} is not a list of addresses")
    networks = {parse_source(source) for source in sources}
    kept = [
        network
        for network in networks
        if not any(
            other != network and other.version == network.version and network.subnet_of(other)  # type: ignore[arg-type]
            for other in networks
        )
    ]
    result: dict[str, list[str]] = {family: [] for family in FAMILIES.values()}
    for network in sorted(kept, key=_sort_key):
        result[FAMILIES[network.version]].append(_text(network))
    return result


def port_number(value: Any) -> int | None:
    """``value`` as a port (an integer or a string of digits, 1-65535), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None
    return number if PORT_MIN <= number <= PORT_MAX else None


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _check_sources(variable: str, sources: Any, errors: list[str], service: bool) -> None:
    """Append the problems of one list of sources to ``errors``."""
    if not _is_list(sources):
        errors.append(f"{variable}={sources!r}: a list of IPv4/IPv6 addresses or CIDRs.")
        return
    for source in sources:
        try:
            network = parse_source(source)
        except ValueError:
            errors.append(f"{variable}: {source!r} is not an IPv4/IPv6 address or CIDR.")
            continue
        if service and network.prefixlen == 0:
            errors.append(
                f"{variable}: {source!r} opens the service to every address; list its client hosts,"
                " or use firewall_public_ports for a port that is meant to be public."
            )


def _check_proto(variable: str, item: Mapping[str, Any], errors: list[str]) -> str:
    """The item's protocol (default tcp); an error when it is not tcp or udp."""
    proto = item.get("proto", "tcp")
    if proto not in PROTOCOLS:
        errors.append(f"{variable}.proto={proto!r}: tcp or udp.")
    return str(proto)


def check_firewall(
    ssh_sources: Any, public_ports: Any, rules: Any, ssh_port: Any = None
) -> list[str]:
    """Every problem of the firewall inputs, one message each (empty list: they are fine).

    Each message names the variable (``firewall_rules[2] (postgresql).sources``)
    and the offending value. Checked: SSH port (when given) and sources;
    public ports ``{port, proto, comment}`` (ports 1-65535, tcp or udp, a
    comment nftables can carry, no duplicate, not the SSH port); rules
    ``{name, ports, proto, sources}`` (unique names, at least one port,
    every source an address or CIDR and never a /0 — a service open to the
    world belongs in the public ports); and no port both public and in a
    rule for the same protocol.
    """
    errors: list[str] = []
    ssh = None
    if ssh_port is not None:
        ssh = port_number(ssh_port)
        if ssh is None:
            errors.append(f"firewall_ssh_port={ssh_port!r}: a port is an integer from {PORT_MIN} to {PORT_MAX}.")
    _check_sources("firewall_ssh_sources", ssh_sources, errors, service=False)

    public: dict[tuple[int, str], str] = {}
    if not _is_list(public_ports):
        errors.append(f"firewall_public_ports={public_ports!r}: a list of {{port, proto, comment}}.")
        public_ports = []
    for index, item in enumerate(public_ports):
        variable = f"firewall_public_ports[{index}]"
        if not isinstance(item, Mapping):
            errors.append(f"{variable}={item!r}: a dict {{port, proto, comment}}.")
            continue
        unknown = sorted(set(map(str, item)) - PUBLIC_PORT_KEYS)
        if unknown:
            errors.append(f"{variable}: unknown keys {unknown} (port, proto, comment).")
        port = port_number(item.get("port"))
        if port is None:
            errors.append(f"{variable}.port={item.get('port')!r}: a port is an integer from {PORT_MIN} to {PORT_MAX}.")
        proto = _check_proto(variable, item, errors)
        comment = item.get("comment")
        if comment is not None and not (isinstance(comment, str) and NAME_RE.fullmatch(comment)):
            errors.append(f"{variable}.comment={comment!r}: {NAME_RULE}.")
        if port is None or proto not in PROTOCOLS:
            continue
        if (port, proto) in public:
            errors.append(f"{variable}: {port}/{proto} is already in {public[(port, proto)]}.")
        public[(port, proto)] = variable
        if ssh is not None and proto == "tcp" and port == ssh:
            errors.append(
                f"{variable}: {port}/tcp is the SSH port (firewall_ssh_port); SSH is opened to firewall_ssh_sources only."
            )

    if not _is_list(rules):
        errors.append(f"firewall_rules={rules!r}: a list of {{name, ports, proto, sources}}.")
        rules = []
    names: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            errors.append(f"firewall_rules[{index}]={rule!r}: a dict {{name, ports, proto, sources}}.")
            continue
        name = rule.get("name")
        variable = f"firewall_rules[{index}] ({name})"
        if not (isinstance(name, str) and NAME_RE.fullmatch(name)):
            errors.append(f"firewall_rules[{index}].name={name!r}: {NAME_RULE}.")
        elif name in names:
            errors.append(f"{variable}: the name {name!r} is already used by firewall_rules[{names[name]}].")
        else:
            names[name] = index
        unknown = sorted(set(map(str, rule)) - RULE_KEYS)
        if unknown:
            errors.append(f"{variable}: unknown keys {unknown} (name, ports, proto, sources).")
        proto = _check_proto(variable, rule, errors)
        ports = rule.get("ports")
        if not _is_list(ports) or len(ports) == 0:
            errors.append(f"{variable}.ports={ports!r}: a non-empty list of ports.")
            ports = []
        for value in ports:
            port = port_number(value)
            if port is None:
                errors.append(f"{variable}.ports: {value!r} is not a port (an integer from {PORT_MIN} to {PORT_MAX}).")
            elif (port, proto) in public:
                errors.append(
                    f"{variable}: {port}/{proto} is also in firewall_public_ports ({public[(port, proto)]}), which"
                    " accepts it from everywhere: the rule's sources would restrict nothing."
                )
        _check_sources(f"{variable}.sources", rule.get("sources", []), errors, service=True)
    return errors


def _address_key(address: str) -> tuple[int, int, str]:
    """Sort addresses numerically, IPv4 first; anything unparsable last (the role's checks name it)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return (7, 0, address)
    return (parsed.version, int(parsed), address)


def firewall_rules(
    hostname: str,
    groups: Mapping[str, Sequence[str]],
    addresses: Mapping[str, str | None],
    services: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The ``firewall_rules`` of ``hostname``, from the inventory.

    ``groups`` is Ansible's ``groups``; ``addresses`` maps a host to its
    private address (None or "" when it has none: an all-in-one host);
    ``services`` lists ``{name, group, ports, clients}`` (``proto`` optional,
    default tcp): the hosts of ``group`` serve ``ports`` to the hosts of the
    groups in ``clients``. For each service whose group has ``hostname``, in
    the order of ``services``: ``{name, ports, proto, sources}`` with the
    sorted, unique addresses of every client host except ``hostname`` itself
    (its own traffic arrives on loopback) and hosts without an address.
    """
    rules: list[dict[str, Any]] = []
    for service in services:
        if hostname not in groups.get(service["group"], []):
            continue
        sources: set[str] = set()
        for group in service.get("clients", []):
            for host in groups.get(group, []):
                address = addresses.get(host)
                if host != hostname and address:
                    sources.add(str(address).strip())
        rules.append(
            {
                "name": service["name"],
                "ports": [int(port) for port in service["ports"]],
                "proto": service.get("proto", "tcp"),
                "sources": sorted(sources, key=_address_key),
            }
        )
    return rules
