"""Pure proxy parsing: trusted networks, Forwarded / X-Forwarded-For, PROXY protocol v1 and v2."""

from __future__ import annotations

import socket
import struct

import pytest

from stunturn_diag.errors import ConfigError, ProxyHeaderError
from stunturn_server.sansio.proxy import (V2_SIGNATURE, TrustedProxies, forwarded_client, parse_proxy_header,
                                   proxy_header_possible)

TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8:ffff::/48"])
PROXY = ("10.0.0.5", 40000)


def test_trusted_membership():
    assert "10.1.2.3" in TRUSTED and "::ffff:10.1.2.3" in TRUSTED and "2001:db8:ffff::1" in TRUSTED
    assert "192.0.2.1" not in TRUSTED and "not-an-ip" not in TRUSTED
    assert not TrustedProxies()
    with pytest.raises(ConfigError, match="trusted-proxy"):
        TrustedProxies(["10.0.0.0/33"])


def test_untrusted_peer_is_the_client_whatever_it_says():
    peer = ("192.0.2.9", 5555)
    assert forwarded_client(peer, TRUSTED, ["for=198.51.100.1"], ["198.51.100.1"]) == peer


def test_x_forwarded_for_rightmost_untrusted_hop_wins():
    # the client forged "1.2.3.4" in front; the proxy appended what it saw
    assert forwarded_client(PROXY, TRUSTED, [], ["1.2.3.4, 198.51.100.7"]) == ("198.51.100.7", 0)
    # two trusted proxies in a row are skipped
    assert forwarded_client(PROXY, TRUSTED, [], ["198.51.100.7, 10.0.0.9"]) == ("198.51.100.7", 0)
    assert forwarded_client(PROXY, TRUSTED, [], ["1.2.3.4", "198.51.100.7"]) == ("198.51.100.7", 0)


def test_forwarded_rfc7239_with_ports_and_ipv6():
    assert forwarded_client(PROXY, TRUSTED, ['for="198.51.100.7:4711";proto=https'], []) == \
        ("198.51.100.7", 4711)
    assert forwarded_client(PROXY, TRUSTED, ['for=1.2.3.4, for="[2001:db8::7]:999"'], []) == \
        ("2001:db8::7", 999)
    # Forwarded wins over X-Forwarded-For
    assert forwarded_client(PROXY, TRUSTED, ["for=198.51.100.7"], ["203.0.113.1"]) == ("198.51.100.7", 0)


def test_unparsable_hop_stops_at_the_last_trusted_one():
    assert forwarded_client(PROXY, TRUSTED, ["for=unknown"], []) == PROXY
    assert forwarded_client(PROXY, TRUSTED, [], ["198.51.100.7, garbage"]) == PROXY
    assert forwarded_client(PROXY, TRUSTED, [], []) == PROXY


def test_proxy_v1_tcp4_and_tcp6():
    data = b"PROXY TCP4 198.51.100.7 192.0.2.1 4711 443\r\nGET / HTTP/1.1\r\n"
    header = parse_proxy_header(data)
    assert header.source == ("198.51.100.7", 4711) and header.destination == ("192.0.2.1", 443)
    assert data[header.length:].startswith(b"GET ")
    header = parse_proxy_header(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n")
    assert header.source == ("2001:db8::7", 1)
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n").source is None


@pytest.mark.parametrize("partial", [b"P", b"PROXY TCP4 198.51", V2_SIGNATURE[:5], V2_SIGNATURE])
def test_incomplete_headers_ask_for_more(partial):
    assert proxy_header_possible(partial)
    assert parse_proxy_header(partial) is None


@pytest.mark.parametrize("bad", [
    b"PROXY TCP4 198.51.100.7 192.0.2.1 4711\r\n",          # a field missing
    b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",             # wrong family
    b"PROXY TCP4 198.51.100.7 192.0.2.1 99999 2\r\n",        # port out of range
    b"PROXY TCP4 198.51.100.7 192.0.2.1 01 2\r\n",           # leading zero
    b"PROXY TCP9 a b 1 2\r\n",
    b"PROXY " + b"x" * 120,                                  # no CRLF within 107 bytes
    b"GET / HTTP/1.1\r\n",                                   # not a PROXY header at all
    V2_SIGNATURE + bytes([0x31, 0x11, 0, 0]),                # version 3
    V2_SIGNATURE + bytes([0x2F, 0x11, 0, 0]),                # command 15
    V2_SIGNATURE + bytes([0x21, 0x11, 0, 4]) + bytes(4),     # IPv4 body too short
])
def test_malformed_headers_are_errors(bad):
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(bad)


def _v2(command: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, fam, len(body)) + body


def test_proxy_v2_ipv4_ipv6_local_and_tlvs():
    body = socket.inet_aton("198.51.100.7") + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 4711, 443)
    tlv = bytes([0x04, 0, 3]) + b"abc"  # a NOOP TLV after the addresses is skipped by length
    header = parse_proxy_header(_v2(1, 0x11, body + tlv) + b"rest")
    assert header.source == ("198.51.100.7", 4711) and header.length == 16 + len(body) + len(tlv)
    body6 = (socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "::1")
             + struct.pack("!HH", 9, 10))
    assert parse_proxy_header(_v2(1, 0x21, body6)).source == ("2001:db8::7", 9)
    assert parse_proxy_header(_v2(0, 0x00, b"")).source is None            # LOCAL
    assert parse_proxy_header(_v2(1, 0x11, body)[:20]) is None               # incomplete
