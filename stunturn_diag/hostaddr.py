"""This host's interface addresses, both families, several per interface.

:func:`host_addresses` asks the OS (``getifaddrs`` through the ``ifaddr`` package: every
IPv4 and IPv6 address of every interface, secondary addresses included, which the older
``SIOCGIFADDR`` helper in :mod:`stunturn_diag.rawsock` cannot see); :func:`usable` is the
pure choice of the addresses worth offering a peer or probing from.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class HostAddress:
    interface: str
    ip: str            # text, no scope suffix
    prefixlen: int
    scope_id: int = 0  # IPv6 link-local scope (interface index); 0 otherwise

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version


def host_addresses() -> list[HostAddress]:
    """Every address of every interface (loopback and link-local included), OS order."""
    import ifaddr

    out: list[HostAddress] = []
    for adapter in ifaddr.get_adapters():
        for item in adapter.ips:
            if isinstance(item.ip, tuple):          # IPv6: (address, flowinfo, scope_id)
                ip, _flow, scope = item.ip
            else:
                ip, scope = item.ip, 0
            out.append(HostAddress(adapter.nice_name, ip.split("%", 1)[0], item.network_prefix, scope))
    return out


def interface_of(ip: str) -> str | None:
    """The interface that holds ``ip`` (None: no interface has it)."""
    return next((a.interface for a in host_addresses() if a.ip == ip), None)


def usable(addresses: list[HostAddress], version: int | None = None) -> list[str]:
    """The addresses a peer elsewhere could reach (pure): no loopback, link-local,
    unspecified or multicast; IPv4-mapped IPv6 folded to IPv4; duplicates once;
    ``version`` 4 or 6 keeps one family. IPv6 global before ULA (RFC 6724 prefers them)."""
    seen: list[str] = []
    for entry in addresses:
        addr = ipaddress.ip_address(entry.ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.is_loopback or addr.is_link_local or addr.is_unspecified or addr.is_multicast:
            continue
        if version is not None and addr.version != version:
            continue
        if str(addr) not in seen:
            seen.append(str(addr))
    ula = ipaddress.ip_network("fc00::/7")
    return sorted(seen, key=lambda ip: ipaddress.ip_address(ip).version == 6
                  and ipaddress.ip_address(ip) in ula)


def has_ipv6() -> bool:
    """True when some interface holds a non-link-local IPv6 address."""
    try:
        return bool(usable(host_addresses(), 6))
    except OSError:
        return False
