"""The one network-address module: host:port text, the IPv4-mapped fold, URL hosts and
the kernel's queued ICMP errors (sock_extended_err bytes as ip(7) lays them out)."""

from __future__ import annotations

import struct

import pytest

from stunturn_diag.sansio.netaddr import (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6,
                                          SO_EE_ORIGIN_LOCAL, format_hostport, parse_hostport,
                                          parse_queued_error, unmapped, url_host)


@pytest.mark.parametrize("text,default,want", [
    ("192.0.2.1:3478", None, ("192.0.2.1", 3478)),
    ("[2001:db8::1]:443", None, ("2001:db8::1", 443)),
    ("host.example:8080", None, ("host.example", 8080)),
    ("192.0.2.1", 3478, ("192.0.2.1", 3478)),
    ("[2001:db8::1]", 3478, ("2001:db8::1", 3478)),
    ("2001:db8::1", 3478, ("2001:db8::1", 3478)),
    ("  198.51.100.7:1 ", None, ("198.51.100.7", 1)),
])
def test_host_port_text_parses(text, default, want):
    assert parse_hostport(text, default) == want


@pytest.mark.parametrize("text,default", [
    ("192.0.2.1", None), ("192.0.2.1:", None), ("192.0.2.1:0", None), ("192.0.2.1:65536", None),
    ("192.0.2.1:http", None), ("[2001:db8::1", 1), ("[2001:db8::1]x", 1), (":80", None),
    ("2001:db8::1:80:x", 1), ("", 1), ("[2001:db8::1]:", 1),
])
def test_bad_host_port_text_says_what_is_wrong(text, default):
    with pytest.raises(ValueError):
        parse_hostport(text, default)


@pytest.mark.parametrize("address", [("192.0.2.1", 3478), ("2001:db8::1", 443), ("name", 1)])
def test_format_and_parse_round_trip(address):
    assert parse_hostport(format_hostport(*address)) == address


def test_format_brackets_only_ipv6():
    assert format_hostport("2001:db8::1", 80) == "[2001:db8::1]:80"
    assert format_hostport("192.0.2.1", 80) == "192.0.2.1:80"


def test_ipv4_mapped_addresses_fold_to_ipv4_and_others_stay():
    assert unmapped("::ffff:192.0.2.7") == "192.0.2.7"
    assert unmapped("2001:db8::7") == "2001:db8::7"
    assert unmapped("192.0.2.7") == "192.0.2.7"
    assert unmapped("fe80::1%eth0") == "fe80::1%eth0"
    with pytest.raises(ValueError):
        unmapped("not-an-ip")


def test_url_host_strips_brackets_and_port():
    assert url_host("http://[2001:db8::1]:8080/v1") == "2001:db8::1"
    assert url_host("https://192.0.2.1:443") == "192.0.2.1"
    with pytest.raises(ValueError):
        url_host("not a url")


def _err(errno_, origin, etype, code, family=None, addr=b""):
    head = struct.pack("=IBBBBII", errno_, origin, etype, code, 0, 0, 0)
    if family is None:
        return head
    return head + struct.pack("=H", family) + addr


def test_an_icmp_time_exceeded_names_the_router_that_sent_it():
    data = _err(113, SO_EE_ORIGIN_ICMP, 11, 0, 2, b"\x00\x00" + bytes([192, 0, 2, 254]) + bytes(8))
    err = parse_queued_error(data)
    assert err.is_icmp and err.is_time_exceeded and err.offender == "192.0.2.254"
    assert (err.errno, err.type, err.code) == (113, 11, 0)


def test_an_icmpv6_error_names_its_sender_too():
    sender = bytes.fromhex("20010db8000000000000000000000001")
    data = _err(101, SO_EE_ORIGIN_ICMP6, 3, 0, 10, b"\x00\x00" + bytes(4) + sender + bytes(4))
    err = parse_queued_error(data)
    assert err.is_icmp and err.is_time_exceeded and err.offender == "2001:db8::1"


def test_a_port_unreachable_is_icmp_but_no_hop_and_a_local_error_is_no_icmp():
    unreachable = parse_queued_error(_err(111, SO_EE_ORIGIN_ICMP, 3, 3, 2, bytes(6) + bytes(8)))
    assert unreachable.is_icmp and not unreachable.is_time_exceeded
    local = parse_queued_error(_err(90, SO_EE_ORIGIN_LOCAL, 0, 0))
    assert not local.is_icmp and local.offender is None


def test_too_short_data_is_not_an_error_record():
    assert parse_queued_error(b"\x00" * 15) is None
