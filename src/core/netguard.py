"""Outbound destination guard: the service never connects to an internal address on a client's say-so.

A client chooses webhook URLs, so without this a callback could reach 127.0.0.1, the cloud
metadata service (169.254.169.254), the service's own /admin, or map ports on the private network.
The check runs on the *resolved* addresses (so `localhost`, decimal `2130706433` and DNS names
that point inward are all caught), and the connection is then pinned to the address that was
checked, so a second DNS answer cannot swap in an internal address (DNS rebinding).

Anything that is not globally routable is blocked (loopback, private, link-local, CGNAT,
multicast, reserved, unspecified, IPv4-mapped forms of those) unless the operator lists the host
or its network in WEBHOOK_ALLOWED_HOSTS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedDestination(Exception):
    """The URL resolves to an address that outbound requests may not reach."""


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks exempt from the block (e.g. ``127.0.0.1,10.0.0.0/8,hooks.internal``)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> AllowList:
        hosts: set[str] = set()
        networks = []
        for item in (spec or "").split(","):
            item = item.strip().lower()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        return host.lower().rstrip(".") in self.hosts or any(address in net for net in self.networks)


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Destination:
    """A checked URL: the address to connect to, and what to tell the server (Host, TLS SNI)."""

    url: str  # with the host replaced by the checked address
    host_header: str
    sni_hostname: str


async def resolve_destination(url: str, allow: AllowList) -> Destination:
    """Resolve ``url``'s host and return a destination pinned to an allowed address."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise BlockedDestination("only absolute http(s) URLs are allowed")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BlockedDestination("the host name does not resolve") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise BlockedDestination("the host name does not resolve")
    # Every answer must pass: otherwise a name with one public and one internal record would
    # reach the internal one on some attempts.
    for address in addresses:
        if not (is_public(address) or allow.allows(host, address)):
            raise BlockedDestination("the destination is not a public address")
    chosen = addresses[0]
    literal = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Destination(url=pinned, host_header=host_header, sni_hostname=host)
