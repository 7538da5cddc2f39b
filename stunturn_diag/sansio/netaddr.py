"""Network addresses, pure: the one ``Address`` type, ``host:port`` text for IPv4 and IPv6,
the IPv4-mapped IPv6 fold, and the ICMP error the kernel queues with ``IP_RECVERR``.

Every module that names a transport address uses :data:`Address`; every ``host:port``
option or record goes through :func:`parse_hostport` / :func:`format_hostport`
(RFC 3986 section 3.2.2: an IPv6 literal is bracketed when a port follows it).
"""

from __future__ import annotations

import ipaddress
import struct
from urllib.parse import urlsplit
from dataclasses import dataclass

#: A transport address: (IP text or host name, port). IPv4 or IPv6, no brackets.
Address = tuple[str, int]

# Linux <linux/errqueue.h> and <bits/socket.h> values (fixed ABI).
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_AF_INET = 2
_AF_INET6 = 10


def parse_hostport(text: str, default_port: int | None = None, *, allow_zero: bool = False) -> Address:
    """``HOST:PORT``, ``[V6]:PORT``, or (with ``default_port``) ``HOST``, ``[V6]`` or a bare
    IPv6 literal -> ``(host, port)``. ``ValueError`` says what is wrong. Port 0 ("any free
    port", for a listen address) only with ``allow_zero``."""
    text = text.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: an IPv6 literal is written [ADDRESS]:PORT")
        port = rest[1:] if rest else ""
        if rest and not port:
            raise ValueError(f"no port after ':' in {text!r}")
    elif text.count(":") == 1:
        host, port = text.split(":")
        if not port:
            raise ValueError(f"no port after ':' in {text!r}")
    elif text.count(":") > 1:
        host, port = text, ""   # a bare IPv6 literal: no port can follow it unbracketed
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{text!r} is neither HOST:PORT nor [IPV6]:PORT") from None
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not port:
        if default_port is None:
            raise ValueError(f"no port in {text!r} (HOST:PORT or [IPV6]:PORT)")
        return host, default_port
    low = 0 if allow_zero else 1
    if not port.isdigit() or not low <= int(port) < 65536:
        raise ValueError(f"port {port!r} in {text!r} is not {low}-65535")
    return host, int(port)


def format_hostport(host: str, port: int) -> str:
    """``(host, port)`` -> ``host:port``, brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_host(url: str) -> str:
    """The host of an ``http(s)://HOST[:PORT]/...`` URL, without IPv6 brackets
    (RFC 3986 section 3.2.2); ``ValueError`` when it has none."""
    host = urlsplit(url).hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    return host


def unmapped(ip: str) -> str:
    """IPv4-mapped IPv6 text (``::ffff:192.0.2.1``, what a dual-stack socket reports for an
    IPv4 peer; RFC 4291 section 2.5.5.2) -> the IPv4 text; any other IP unchanged, as given.
    ``ValueError`` when ``ip`` is no IP address."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return ip


def unmapped_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The same fold on an :mod:`ipaddress` object."""
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class QueuedError:
    """One ``struct sock_extended_err`` from a socket's error queue (``IP_RECVERR`` /
    ``IPV6_RECVERR``, see ip(7)): ``origin`` SO_EE_ORIGIN_*, the ICMP ``type``/``code``,
    the ``errno`` the kernel mapped it to, and the address of the node that sent it."""

    errno: int
    origin: int
    type: int
    code: int
    offender: str | None

    @property
    def is_icmp(self) -> bool:
        return self.origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6)

    @property
    def is_time_exceeded(self) -> bool:
        """ICMP time exceeded (RFC 792 type 11) or ICMPv6 time exceeded (RFC 4443 type 3)."""
        return ((self.origin == SO_EE_ORIGIN_ICMP and self.type == 11)
                or (self.origin == SO_EE_ORIGIN_ICMP6 and self.type == 3))


def parse_queued_error(data: bytes) -> QueuedError | None:
    """Decode the ancillary data of one ``recvmsg(..., MSG_ERRQUEUE)`` control message:
    ``u32 ee_errno; u8 ee_origin, ee_type, ee_code, ee_pad; u32 ee_info, ee_data;`` then the
    offender's ``sockaddr`` (``SO_EE_OFFENDER``). ``None`` when too short to be one."""
    if len(data) < 16:
        return None
    ee_errno, origin, etype, code = struct.unpack_from("=IBBB", data, 0)
    offender = None
    if len(data) >= 18:
        family = struct.unpack_from("=H", data, 16)[0]
        if family == _AF_INET and len(data) >= 24:
            offender = str(ipaddress.IPv4Address(data[20:24]))
        elif family == _AF_INET6 and len(data) >= 40:
            offender = str(ipaddress.IPv6Address(data[24:40]))
    return QueuedError(ee_errno, origin, etype, code, offender)
