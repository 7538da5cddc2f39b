"""Pure parsing of what a trusted reverse proxy says about the client (no sockets).

- :class:`TrustedProxies`: the ``serve --trusted-proxy CIDR`` list; only a peer inside it is
  believed at all;
- :func:`forwarded_client`: the client address from ``Forwarded`` (RFC 7239) or
  ``X-Forwarded-For``: the chain is walked from the right (the hop nearest to us) and the
  first address that is not itself a trusted proxy is the client, so a client cannot
  forge an address by sending its own header in front;
- :func:`parse_proxy_header`: the PROXY protocol (HAProxy, v1 text and v2 binary) header
  that a proxy sends before anything else on a connection.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from stunturn_diag.sansio.netaddr import Address
from dataclasses import dataclass

from stunturn_diag.errors import ConfigError, ProxyHeaderError
from stunturn_diag.sansio.netaddr import unmapped_address



class TrustedProxies:
    """A set of networks whose peers may tell us the client's address."""

    def __init__(self, cidrs=()) -> None:
        networks = []
        for text in cidrs:
            try:
                networks.append(ipaddress.ip_network(str(text).strip(), strict=False))
            except ValueError:
                raise ConfigError(f"--trusted-proxy {text!r} is not an IP network",
                                  hint="give a CIDR such as 10.0.0.5/32 or 2001:db8::/64") from None
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        address = unmapped_address(address)
        return any(address in net for net in self.networks if net.version == address.version)


_FORWARDED_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)', re.IGNORECASE)


def _node(text: str) -> Address | None:
    """An RFC 7239 node (``192.0.2.1``, ``"192.0.2.1:4711"``, ``"[2001:db8::1]:4711"``) or an
    X-Forwarded-For entry -> (ip, port or 0); ``None`` for ``unknown``, obfuscated or bad ones."""
    text = text.strip().strip('"').replace('\\"', '"')
    port = "0"
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        port = "0"  # "_obfuscated" ports and junk: the address still counts
    return str(unmapped_address(ip)), int(port)


def forwarded_chain(forwarded: list[str], x_forwarded_for: list[str]) -> list[Address | None]:
    """The hops named by the headers, oldest first (``Forwarded`` wins when present)."""
    hops: list[Address | None] = []
    if forwarded:
        for header in forwarded:
            for element in header.split(","):
                found = _FORWARDED_FOR.search(element)
                hops.append(_node(found.group(1)) if found else None)
        return hops
    for header in x_forwarded_for:
        hops.extend(_node(part) for part in header.split(",") if part.strip())
    return hops


def forwarded_client(peer: Address, trusted: TrustedProxies, forwarded: list[str],
                     x_forwarded_for: list[str]) -> Address:
    """The client's address for a request that arrived from ``peer``.

    A peer outside ``trusted`` is the client whatever its headers say. Otherwise the hops
    are walked from the right: trusted proxies are skipped, the first other hop is the
    client; an unparsable hop stops the walk at the last trusted one (we cannot see past it).
    """
    if peer[0] not in trusted:
        return peer
    client = peer
    for hop in reversed(forwarded_chain(forwarded, x_forwarded_for)):
        if hop is None:
            break
        client = hop
        if hop[0] not in trusted:
            break
    return client


# -- PROXY protocol (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt) --------

V1_PREFIX = b"PROXY "
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16


@dataclass(frozen=True)
class ProxyHeader:
    """What the proxy said: the client's address (``None`` for LOCAL / UNKNOWN: the proxy's
    own connection, e.g. a health check) and the address the client connected to."""

    length: int
    source: Address | None
    destination: Address | None = None


def proxy_header_possible(data: bytes) -> bool:
    """Could ``data`` (the first bytes of a connection) be, or begin, a PROXY header?"""
    return any(sig.startswith(data[:len(sig)]) for sig in (V1_PREFIX, V2_SIGNATURE)) and bool(data)


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """Parse the PROXY header at the start of ``data``.

    Returns ``None`` when more bytes are needed, a :class:`ProxyHeader` (``length`` bytes
    to consume) when complete; raises :class:`ProxyHeaderError` when it is not one or
    is malformed.
    """
    if data.startswith(V2_SIGNATURE[:len(data)]) and len(data) < len(V2_SIGNATURE):
        return None
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if V1_PREFIX.startswith(data[:len(V1_PREFIX)]):
        return _parse_v1(data)
    raise ProxyHeaderError("the connection from a trusted proxy does not start with a PROXY "
                           "protocol header", hint="configure the proxy to send one (HAProxy: "
                           "send-proxy or send-proxy-v2) or remove it from --trusted-proxy")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX} bytes")
        return None
    try:
        words = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(end + 2, None)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 header {data[:end]!r}")
    _, family, src, dst, sport, dport = words
    version = 4 if family == "TCP4" else 6
    try:
        addresses = [ipaddress.ip_address(a) for a in (src, dst)]
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header with a bad address: {data[:end]!r}") from None
    ports = []
    for text in (sport, dport):
        if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
            raise ProxyHeaderError(f"PROXY v1 header with a bad port: {data[:end]!r}")
        ports.append(int(text))
    if any(a.version != version for a in addresses):
        raise ProxyHeaderError(f"PROXY v1 {family} header with addresses of another family")
    return ProxyHeader(end + 2, (str(addresses[0]), ports[0]), (str(addresses[1]), ports[1]))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_HEADER:
        return None
    ver_cmd, fam, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    total = V2_HEADER + length
    if len(data) < total:
        return None
    body = data[V2_HEADER:total]
    if command == 0:  # LOCAL: the proxy's own connection
        return ProxyHeader(total, None)
    family, transport = fam >> 4, fam & 0x0F
    if transport not in (1, 2):  # STREAM / DGRAM
        return ProxyHeader(total, None) if fam == 0 else _bad_family(fam)
    if family == 1:  # AF_INET
        if len(body) < 12:
            raise ProxyHeaderError("PROXY v2 IPv4 header too short")
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
    elif family == 2:  # AF_INET6
        if len(body) < 36:
            raise ProxyHeaderError("PROXY v2 IPv6 header too short")
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
    elif family == 0:  # AF_UNSPEC
        return ProxyHeader(total, None)
    else:  # AF_UNIX: no IP to take
        return ProxyHeader(total, None)
    source = str(unmapped_address(ipaddress.ip_address(src))), sport
    return ProxyHeader(total, source, (str(unmapped_address(ipaddress.ip_address(dst))), dport))


def _bad_family(fam: int):
    raise ProxyHeaderError(f"PROXY v2 header with unknown address family/transport 0x{fam:02x}")
