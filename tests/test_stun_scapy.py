"""Scapy interop: Scapy dissects the codec's RFC 5780 attributes; the codec decodes Scapy's packets."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("scapy")

from scapy.contrib.stun import STUNFingerprint, STUNMessageIntegrity, STUNXorMappedAddress  # noqa: E402
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402

from stunturn_diag.sansio.stun import (  # noqa: E402
    AttrType,
    ChangeRequest,
    ErrorCode,
    MessageClass,
    Method,
    StunMessage,
    binding_request,
    decode,
    encode,
)
from stunturn_testkit.scapy_layers import (  # noqa: E402
    STUN,
    STUNChangedAddress,
    STUNChangeRequest,
    STUNErrorCode,
    STUNOtherAddress,
    STUNPadding,
    STUNResponseAddress,
    STUNResponseOrigin,
    STUNResponsePort,
    STUNSoftware,
    STUNSourceAddress,
    bind_port,
    binding_request_packet,
)

TID = bytes.fromhex("0102030405060708090a0b0c")


def test_codec_does_not_import_scapy() -> None:
    code = "import sys, stunturn_diag.sansio.stun; assert 'scapy' not in sys.modules, 'scapy imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True), (True, True)])
def test_scapy_dissects_codec_binding_request(flags: tuple[bool, bool]) -> None:
    msg = binding_request(TID, change_ip=flags[0], change_port=flags[1], response_port=40001,
                          padding=7, software="stunturn-diag")
    data = encode(msg, integrity_key=b"key", fingerprint=True)
    pkt = STUN(data)
    layers = {type(a): a for a in pkt.attributes}
    assert layers[STUNSoftware].software == b"stunturn-diag"
    if any(flags):
        cr = layers[STUNChangeRequest]
        assert (bool(cr.change_ip), bool(cr.change_port)) == flags
    else:
        assert STUNChangeRequest not in layers
    assert layers[STUNResponsePort].port == 40001
    assert layers[STUNPadding].padding == bytes(7) and layers[STUNPadding].length == 7
    assert STUNMessageIntegrity in layers and STUNFingerprint in layers
    assert pkt.transaction_id == int.from_bytes(TID, "big")
    assert bytes(pkt) == data  # Scapy rebuilds the same bytes


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_scapy_dissects_codec_response(family: str) -> None:
    v4 = family == "ipv4"
    mapped = ("198.51.100.7", 61000) if v4 else ("2001:db8::7", 61000)
    origin = ("192.0.2.1", 3478) if v4 else ("2001:db8::1", 3478)
    other = ("192.0.2.2", 3479) if v4 else ("2001:db8::2", 3479)
    msg = StunMessage(Method.BINDING, MessageClass.SUCCESS, TID, [
        (AttrType.XOR_MAPPED_ADDRESS, mapped),
        (AttrType.RESPONSE_ORIGIN, origin),
        (AttrType.OTHER_ADDRESS, other),
        (AttrType.SOURCE_ADDRESS, origin),
        (AttrType.CHANGED_ADDRESS, other),
        (AttrType.RESPONSE_ADDRESS, mapped),
        (AttrType.ERROR_CODE, ErrorCode(420, "Unknown Attribute")),
    ])
    data = encode(msg, fingerprint=True)
    pkt = STUN(data)
    layers = {type(a): a for a in pkt.attributes}
    xor = layers[STUNXorMappedAddress]
    assert (xor.xip, xor.xport) == mapped
    for layer, expected in [(STUNResponseOrigin, origin), (STUNOtherAddress, other),
                            (STUNSourceAddress, origin), (STUNChangedAddress, other),
                            (STUNResponseAddress, mapped)]:
        got = layers[layer]
        assert (got.ip, got.port) == expected
        assert got.address_family == (1 if v4 else 2)
    err = layers[STUNErrorCode]
    assert (err.error_class, err.number, err.reason) == (4, 20, b"Unknown Attribute")
    assert bytes(pkt) == data


@pytest.mark.parametrize("dst", ["127.0.0.1", "::1"])
def test_codec_decodes_scapy_binding_request(dst: str) -> None:
    src = "127.0.0.2" if ":" not in dst else "::1"
    pkt = binding_request_packet(src, dst, 50000, 3478, transaction_id=TID, change_ip=True,
                                 change_port=True, response_port=50001, padding=5,
                                 software="scapy", fingerprint=True)
    wire = bytes(pkt)
    parsed = (IPv6 if ":" in dst else IP)(wire)
    assert parsed[UDP].dport == 3478 and STUN in parsed
    msg = decode(bytes(parsed[STUN]))  # FINGERPRINT verified by decode
    assert msg.method == Method.BINDING and msg.msg_class == MessageClass.REQUEST
    assert msg.transaction_id == TID
    assert msg.change_request == ChangeRequest(True, True)
    assert msg.response_port == 50001
    assert msg.get(AttrType.PADDING) == bytes(5)
    assert msg.software == "scapy"
    assert msg.get(AttrType.FINGERPRINT) is not None
    # same bytes as the codec's own builder
    assert bytes(parsed[STUN]) == encode(binding_request(
        TID, change_ip=True, change_port=True, response_port=50001, padding=5,
        software="scapy"), fingerprint=True)


def test_codec_decodes_scapy_crafted_response() -> None:
    stun = STUN(stun_message_type="Binding success response", transaction_id=int.from_bytes(TID, "big"),
                attributes=[
                    STUNXorMappedAddress(address_family=1, xport=40000, xip="203.0.113.5"),
                    STUNResponseOrigin(address_family=1, port=3478, ip="192.0.2.1"),
                    STUNOtherAddress(address_family=2, port=3479, ip="2001:db8::2"),
                    STUNErrorCode(error_class=5, number=0, reason=b"Server Error"),
                    STUNSoftware(software=b"abc"),
                ])
    msg = decode(bytes(stun))
    assert msg.msg_class == MessageClass.SUCCESS
    assert msg.mapped_address == ("203.0.113.5", 40000)
    assert msg.response_origin == ("192.0.2.1", 3478)
    assert msg.other_address == ("2001:db8::2", 3479)
    assert msg.error == ErrorCode(500, "Server Error")
    assert msg.software == "abc"


def test_bind_port_dissects_other_ports() -> None:
    pkt = binding_request_packet("127.0.0.1", "127.0.0.1", 40123, 40124, transaction_id=TID)
    assert STUN not in IP(bytes(pkt))
    bind_port(40124)
    again = IP(bytes(pkt))
    assert STUN in again and decode(bytes(again[STUN])).transaction_id == TID


def test_scapy_own_layers_are_not_replaced() -> None:
    from scapy.contrib import stun as scapy_stun

    assert scapy_stun._stun_tlv_class[0x0020] is STUNXorMappedAddress
    assert scapy_stun._stun_tlv_class[0x802C] is STUNOtherAddress
