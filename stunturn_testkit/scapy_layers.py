"""Scapy layers for the STUN attributes ``scapy.contrib.stun`` does not dissect.

Scapy 2.8's STUN layer knows MAPPED-ADDRESS, XOR-MAPPED-ADDRESS, USERNAME,
MESSAGE-INTEGRITY, PRIORITY, USE-CANDIDATE, FINGERPRINT and ICE-CONTROLLING.
This module adds the RFC 5780 attributes CHANGE-REQUEST (7.2), RESPONSE-ORIGIN
(7.3), OTHER-ADDRESS (7.4), RESPONSE-PORT (7.5), PADDING (7.6), plus ERROR-CODE
and SOFTWARE (RFC 8489 sections 14.8, 14.14) and the RFC 3489 address attributes
RESPONSE-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS, and registers them so
``STUN(raw_bytes)`` dissects them.

Importing this module imports Scapy (slow); the codec itself never does.
"""

from __future__ import annotations

import ipaddress

from scapy.contrib import stun as _scapy_stun
from scapy.contrib.stun import STUN, STUNFingerprint, STUNGenericTlv
from scapy.fields import (
    BitField,
    ByteEnumField,
    ByteField,
    FieldLenField,
    IP6Field,
    IPField,
    MultipleTypeField,
    PadField,
    ShortField,
    StrLenField,
    XShortField,
)
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, bind_layers

from stunturn_diag.errors import StunEncodeError
from stunturn_diag.sansio.stun.constants import AttrType
from stunturn_diag.sansio.stun.integrity import fingerprint as _fingerprint
from stunturn_diag.sansio.stun.message import new_transaction_id
from stunturn_diag.stun_requests import fresh_transaction_id

__all__ = [
    "STUN", "STUNChangeRequest", "STUNResponseOrigin", "STUNOtherAddress", "STUNResponsePort",
    "STUNPadding", "STUNErrorCode", "STUNSoftware", "STUNResponseAddress", "STUNSourceAddress",
    "STUNChangedAddress", "binding_request_packet", "bind_port", "EXTRA_ATTRIBUTE_LAYERS",
]

_FAMILIES = {"IPv4": 0x01, "IPv6": 0x02}


def _address_fields(attr_type: int) -> list:
    """Fields of a MAPPED-ADDRESS shaped attribute (RFC 8489 section 14.1), not XOR'ed."""
    return [
        XShortField("type", attr_type),
        FieldLenField("length", None, length_of="ip", adjust=lambda pkt, x: x + 4),
        ByteField("reserved", 0),
        ByteEnumField("address_family", 1, _FAMILIES),
        ShortField("port", 0),
        MultipleTypeField(
            [
                (IPField("ip", "0.0.0.0"), lambda pkt: pkt.address_family == 1),
                (IP6Field("ip", "::"), lambda pkt: pkt.address_family == 2),
            ],
            IPField("ip", "0.0.0.0"),
        ),
    ]


def _text_fields(attr_type: int, name: str) -> list:
    """Fields of a UTF-8 text attribute padded to 4 bytes."""
    return [
        XShortField("type", attr_type),
        FieldLenField("length", None, length_of=name),
        PadField(StrLenField(name, b"", length_from=lambda pkt: pkt.length), align=4),
    ]


class STUNChangeRequest(STUNGenericTlv):
    """CHANGE-REQUEST (RFC 5780 section 7.2): flags A (change IP), B (change port)."""

    name = "STUN CHANGE-REQUEST"
    fields_desc = [
        XShortField("type", AttrType.CHANGE_REQUEST),
        ShortField("length", 4),
        BitField("reserved", 0, 29),
        BitField("change_ip", 0, 1),
        BitField("change_port", 0, 1),
        BitField("unused", 0, 1),
    ]


class STUNResponsePort(STUNGenericTlv):
    """RESPONSE-PORT (RFC 5780 section 7.5): port, then 16 reserved bits."""

    name = "STUN RESPONSE-PORT"
    fields_desc = [
        XShortField("type", AttrType.RESPONSE_PORT),
        ShortField("length", 4),
        ShortField("port", 0),
        XShortField("reserved", 0),
    ]


class STUNPadding(STUNGenericTlv):
    """PADDING (RFC 5780 section 7.6): arbitrary bytes, itself padded to 4."""

    name = "STUN PADDING"
    fields_desc = [
        XShortField("type", AttrType.PADDING),
        FieldLenField("length", None, length_of="padding"),
        PadField(StrLenField("padding", b"", length_from=lambda pkt: pkt.length), align=4),
    ]


class STUNErrorCode(STUNGenericTlv):
    """ERROR-CODE (RFC 8489 section 14.8): class (hundreds), number, UTF-8 reason."""

    name = "STUN ERROR-CODE"
    fields_desc = [
        XShortField("type", AttrType.ERROR_CODE),
        FieldLenField("length", None, length_of="reason", adjust=lambda pkt, x: x + 4),
        BitField("reserved", 0, 21),
        BitField("error_class", 4, 3),
        ByteField("number", 0),
        PadField(StrLenField("reason", b"", length_from=lambda pkt: pkt.length - 4), align=4),
    ]


class STUNSoftware(STUNGenericTlv):
    """SOFTWARE (RFC 8489 section 14.14)."""

    name = "STUN SOFTWARE"
    fields_desc = _text_fields(AttrType.SOFTWARE, "software")


class STUNResponseOrigin(STUNGenericTlv):
    """RESPONSE-ORIGIN (RFC 5780 section 7.3)."""

    name = "STUN RESPONSE-ORIGIN"
    fields_desc = _address_fields(AttrType.RESPONSE_ORIGIN)


class STUNOtherAddress(STUNGenericTlv):
    """OTHER-ADDRESS (RFC 5780 section 7.4)."""

    name = "STUN OTHER-ADDRESS"
    fields_desc = _address_fields(AttrType.OTHER_ADDRESS)


class STUNResponseAddress(STUNGenericTlv):
    """RESPONSE-ADDRESS (RFC 3489 section 11.2.2)."""

    name = "STUN RESPONSE-ADDRESS"
    fields_desc = _address_fields(AttrType.RESPONSE_ADDRESS)


class STUNSourceAddress(STUNGenericTlv):
    """SOURCE-ADDRESS (RFC 3489 section 11.2.5)."""

    name = "STUN SOURCE-ADDRESS"
    fields_desc = _address_fields(AttrType.SOURCE_ADDRESS)


class STUNChangedAddress(STUNGenericTlv):
    """CHANGED-ADDRESS (RFC 3489 section 11.2.3)."""

    name = "STUN CHANGED-ADDRESS"
    fields_desc = _address_fields(AttrType.CHANGED_ADDRESS)


#: attribute type -> layer class added by this module
EXTRA_ATTRIBUTE_LAYERS: dict[int, type[Packet]] = {
    int(AttrType.CHANGE_REQUEST): STUNChangeRequest,
    int(AttrType.RESPONSE_PORT): STUNResponsePort,
    int(AttrType.PADDING): STUNPadding,
    int(AttrType.ERROR_CODE): STUNErrorCode,
    int(AttrType.SOFTWARE): STUNSoftware,
    int(AttrType.RESPONSE_ORIGIN): STUNResponseOrigin,
    int(AttrType.OTHER_ADDRESS): STUNOtherAddress,
    int(AttrType.RESPONSE_ADDRESS): STUNResponseAddress,
    int(AttrType.SOURCE_ADDRESS): STUNSourceAddress,
    int(AttrType.CHANGED_ADDRESS): STUNChangedAddress,
}


def _register() -> None:
    """Make ``STUNGenericTlv.dispatch_hook`` pick our layers (scapy keeps a module-level table)."""
    for attr_type, layer in EXTRA_ATTRIBUTE_LAYERS.items():
        _scapy_stun._stun_tlv_class.setdefault(attr_type, layer)
        _scapy_stun._stun_tlv_attribute_types.setdefault(
            AttrType(attr_type).name.replace("_", "-"), attr_type)


_register()


def bind_port(port: int) -> None:
    """Dissect UDP traffic to/from ``port`` as STUN (Scapy binds only 3478 by default)."""
    bind_layers(UDP, STUN, sport=port)
    bind_layers(UDP, STUN, dport=port)


def binding_request_packet(src: str, dst: str, sport: int, dport: int = 3478, *,
                           transaction_id: bytes | None = None, change_ip: bool = False,
                           change_port: bool = False, response_port: int | None = None,
                           padding: int = 0, software: str | None = None,
                           fingerprint: bool = False) -> Packet:
    """IP/UDP/STUN Binding request (RFC 8489 section 6.1) built from Scapy layers.

    Attribute order matches :func:`stunturn_diag.sansio.stun.binding_request`:
    SOFTWARE, CHANGE-REQUEST (when a flag is set), RESPONSE-PORT, PADDING, then
    FINGERPRINT (RFC 8489 section 14.7) when asked. IPv6 when ``dst`` is IPv6.
    """
    tid = transaction_id if transaction_id is not None else fresh_transaction_id()
    if len(tid) != 12:
        raise StunEncodeError("Scapy's STUN layer needs a 12-byte transaction id (RFC 5389/8489)")
    attributes: list[Packet] = []
    if software is not None:
        attributes.append(STUNSoftware(software=software.encode("utf-8")))
    if change_ip or change_port:
        attributes.append(STUNChangeRequest(change_ip=int(change_ip), change_port=int(change_port)))
    if response_port is not None:
        attributes.append(STUNResponsePort(port=response_port))
    if padding > 0:
        attributes.append(STUNPadding(padding=bytes(padding)))
    stun = STUN(stun_message_type="Binding request", transaction_id=int.from_bytes(tid, "big"),
                attributes=attributes)
    if fingerprint:
        stun.attributes = attributes + [STUNFingerprint(crc_32=0)]
        raw = bytes(stun)
        stun.attributes[-1].crc_32 = _fingerprint(raw[:-8])
    network = IPv6(src=src, dst=dst) if ipaddress.ip_address(dst).version == 6 else IP(src=src, dst=dst)
    return network / UDP(sport=sport, dport=dport) / stun
