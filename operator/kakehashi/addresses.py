"""Which network addresses a server may be made to connect to on a user's behalf (SSRF rules).

Shared by the inference server's URL fetching and the operator's webhook notifications: both
connect to a URL someone else chose, from a pod that can reach the cloud metadata service (IAM
credentials), the Kubernetes API and every internal service. Standard library only, so the
light serving image can use it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Named so the refusal says what the address is; all of them are non-global anyway.
METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
# IPv6 prefixes whose addresses carry an IPv4 address that a translator or tunnel reaches.
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: IPv4 in the low 32 bits
# The local-use prefix (RFC 8215) carries the IPv4 address where the site's prefix length puts
# it (RFC 6052: bits 48-87 for a /48, the low 32 only for a /96), so the inner address cannot be
# read from outside: refused whole, as the local network it leads into.
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")
_SIIT: Final = ipaddress.ip_network("::ffff:0:0:0/96")  # ::ffff:0:a.b.c.d (RFC 6052/7915)
_COMPAT: Final = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible ::a.b.c.d


class Allowlist:
    """Networks and host names reached although not public (e.g. an internal image store)."""

    def __init__(self, entries: tuple[str, ...] | list[str]) -> None:
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def permits(self, host: str, address: IPAddress) -> bool:
        return host in self.hosts or any(address in network for network in self.networks)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (mapped, NAT64, 6to4, SIIT, compatible)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or address in _SIIT:
        return low32
    if address in _COMPAT and int(address) > 1:  # not :: or ::1, which are themselves
        return low32
    return None


def unmap(address: IPAddress) -> IPAddress:
    """`::ffff:a.b.c.d` is how a dual-stack socket shows an IPv4 peer: connect to the IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (a literal is itself), IPv4-mapped ones unmapped.

    Raises OSError when the name does not resolve. The caller checks each address and then
    connects to one of them, so no second lookup can answer differently (DNS rebinding).
    """
    try:
        return [unmap(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [unmap(ipaddress.ip_address(info[4][0])) for info in infos]


def host_header(scheme: str, host: str, port: int | None) -> str:
    """The Host header for a request sent to a checked address instead of the name."""
    default = 443 if scheme == "https" else 80
    name = f"[{host}]" if ":" in host else host
    return name if port in (None, default) else f"{name}:{port}"


def why_refused(address: IPAddress) -> str | None:
    """Why a connection to `address` is refused, or None for a public address."""
    if address in _NAT64_LOCAL:
        return "a local-use NAT64 address"
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = why_refused(inner)
        return f"{reason} ({inner}, embedded in {address})" if reason else None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified:  # 0.0.0.0 and :: connect to this host
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if not address.is_global or address.is_multicast:
        return "not a public address"
    return None
