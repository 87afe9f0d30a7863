"""Where a webhook may go: public addresses only, unless the operator allows a host or range.

`submission_problem` is the gateway's check, without DNS: it refuses literal addresses in any spelling a
resolver accepts (short, decimal, hex and octal IPv4, IPv4-mapped and other IPv4-carrying IPv6, a trailing
dot) and `localhost` names. `resolve` is the worker's check at delivery: it resolves the name once, refuses
the target if any of its addresses is not public, and returns the address to connect to (the caller connects
to that address, so a second lookup cannot answer differently). Stdlib only: the gateway imports it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_SETTING = "EMOE_WEBHOOK_ALLOW"

_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class TargetRefused(ValueError):
    """The webhook target is not a public address and the operator has not allowed it."""


@dataclass(frozen=True)
class Allow:
    """Hosts (lower case, no trailing dot) and ranges the operator lets webhooks reach."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    def allows_address(self, address: IPAddress) -> bool:
        candidates = [address]
        inner = _embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
        return any(a in net for a in candidates for net in self.networks if a.version == net.version)


@lru_cache(maxsize=16)
def parse_allow(spec: str | None) -> Allow:
    """`Allow` from a comma-separated list of host names and CIDR ranges (`127.0.0.1/32,localhost`)."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for raw in (spec or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = normal_host(entry)
        if not name or "/" in name or any(c.isspace() or c in "@:[]\\" for c in name):
            raise ValueError(f"{ALLOW_SETTING}: {entry!r} is neither a host name nor a CIDR range")
        hosts.add(name)
    return Allow(frozenset(hosts), tuple(networks))


def normal_host(host: str) -> str:
    """A host as compared: percent-decoded, lower case, without brackets or one trailing dot."""
    host = unquote(host).strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") else host


def _ipv4_part(part: str) -> int | None:
    """One inet_aton part: decimal, 0x hex or 0-prefixed octal."""
    if part[:2] in ("0x", "0X"):
        digits, base, alphabet = part[2:] or "0", 16, "0123456789abcdefABCDEF"
    elif len(part) > 1 and part[0] == "0":
        digits, base, alphabet = part[1:], 8, "01234567"
    else:
        digits, base, alphabet = part, 10, "0123456789"
    if not digits or any(c not in alphabet for c in digits):
        return None
    return int(digits, base)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 in the spellings resolvers accept (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`)."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_ipv4_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):  # type: ignore[operator]
        return None
    number = 0
    for v in head:
        number = number * 256 + v  # type: ignore[operator]
    return ipaddress.IPv4Address(number * 256 ** (4 - len(head)) + last)  # type: ignore[operator]


def parse_ip(host: str) -> IPAddress | None:
    """`host` as an IP address in any spelling a resolver or URL parser takes, else None (a name)."""
    host = normal_host(host)
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return _inet_aton(host)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any."""
    if address.version != 6:
        return None
    assert isinstance(address, ipaddress.IPv6Address)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_problem(address: IPAddress) -> str | None:
    """What makes `address` a target webhooks must not reach, or None for a public unicast address."""
    inner = _embedded_ipv4(address)
    checks: list[IPAddress] = [address] if inner is None else [inner, address]
    for a in checks:
        if a.is_unspecified:
            return "an unspecified address"
        if a.is_loopback:
            return "a loopback address"
        if a.is_link_local:
            return "a link-local address"
        if a.is_multicast:
            return "a multicast address"
        if a.version == 6 and a in _UNIQUE_LOCAL:
            return "a unique-local address"
        if a.is_private:
            return "a private address"
        if a.is_reserved or not a.is_global:
            return "not a public address"
    return None


def is_local_name(host: str) -> bool:
    """`localhost` and its subdomains (RFC 6761: they always mean this machine)."""
    name = normal_host(host)
    return name == "localhost" or name.endswith(".localhost")


def _refusal(host: str, address: IPAddress | None, problem: str) -> str:
    shown = host if address is None or normal_host(host) == str(address) else f"{host} ({address})"
    return f"{shown} is {problem}; an operator can allow it with {ALLOW_SETTING}"


def host_problem(host: str, allow: Allow) -> str | None:
    """Why `host` is refused without any DNS lookup (a literal address or a localhost name), else None."""
    if normal_host(host) in allow.hosts:
        return None
    address = parse_ip(host)
    if address is not None:
        problem = None if allow.allows_address(address) else address_problem(address)
        return None if problem is None else _refusal(host, address, problem)
    if is_local_name(host):
        return _refusal(host, None, "this machine")
    return None


def submission_problem(url: str, allow: Allow) -> str | None:
    """The gateway's check of a callback URL: what can be refused without DNS (see `host_problem`)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return "is not a valid URL"
    return None if host is None else host_problem(host, allow)


Resolver = Callable[..., list[tuple[Any, ...]]]


def resolve(host: str, port: int, allow: Allow, resolver: Resolver | None = None) -> IPAddress:
    """The one address to connect to for `host`: resolved once, refused (`TargetRefused`) when the host is
    not allowed and any of its addresses is not public. Raises OSError when the name does not resolve."""
    problem = host_problem(host, allow)
    if problem is not None:
        raise TargetRefused(problem)
    literal = parse_ip(host)
    if literal is not None:
        return literal
    name = host[:-1] if host.endswith(".") else host
    lookup = resolver or socket.getaddrinfo  # looked up per call, so a test can stand in for DNS
    infos = lookup(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{host} has no address")
    if normal_host(host) not in allow.hosts:
        for address in addresses:
            problem = None if allow.allows_address(address) else address_problem(address)
            if problem is not None:
                raise TargetRefused(_refusal(host, address, problem))
    return addresses[0]
