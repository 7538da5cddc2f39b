"""STUN numbers: magic cookie, methods, classes, attribute types.

Sources: RFC 8489 sections 5, 14 and 18 (IANA), RFC 5780 section 7 (NAT behaviour
discovery attributes), RFC 3489 section 11.2 (classic attributes), RFC 8656
(TURN methods/attributes) and RFC 8445 (ICE attributes), listed so they are
recognised.
"""

from __future__ import annotations

from enum import IntEnum

#: RFC 8489 section 5: fixed value in bytes 4..8 of every RFC 5389/8489 message.
MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")

#: RFC 8489 section 14.7: the CRC-32 is XOR'ed with this before it is sent.
FINGERPRINT_XOR = 0x5354554E

#: RFC 8489 section 5: 20-byte header (type, length, cookie, transaction id).
HEADER_LENGTH = 20
#: Transaction id length with (RFC 8489) and without (RFC 3489) the magic cookie.
TRANSACTION_ID_LENGTH = 12
CLASSIC_TRANSACTION_ID_LENGTH = 16
#: Largest value of the 16-bit message length field that is a multiple of 4.
MAX_BODY_LENGTH = 0xFFFC

#: Address families of the address attributes (RFC 8489 sections 14.1, 14.2).
FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

#: CHANGE-REQUEST flag bits (RFC 5780 section 7.2, RFC 3489 section 11.2.4).
CHANGE_IP_FLAG = 0x04
CHANGE_PORT_FLAG = 0x02


class MessageClass(IntEnum):
    """The two class bits C1 C0 of the message type (RFC 8489 section 5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(IntEnum):
    """STUN methods (RFC 8489 section 18.2; TURN methods per RFC 8656 / RFC 6062)."""

    BINDING = 0x001
    SHARED_SECRET = 0x002  # RFC 3489 only, reserved since RFC 5389
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class AttrType(IntEnum):
    """Attribute types (RFC 8489 section 18.3, RFC 5780 section 7, RFC 3489 section 11.2).

    0x0000-0x7FFF are comprehension-required, 0x8000-0xFFFF comprehension-optional
    (RFC 8489 section 15).
    """

    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002  # RFC 3489
    CHANGE_REQUEST = 0x0003  # RFC 5780 section 7.2 (and RFC 3489)
    SOURCE_ADDRESS = 0x0004  # RFC 3489
    CHANGED_ADDRESS = 0x0005  # RFC 3489
    USERNAME = 0x0006
    PASSWORD = 0x0007  # RFC 3489 only
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REFLECTED_FROM = 0x000B  # RFC 3489
    XOR_PEER_ADDRESS = 0x0012  # RFC 8656
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016  # RFC 8656
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024  # RFC 8445 (ICE)
    USE_CANDIDATE = 0x0025  # RFC 8445 (ICE)
    PADDING = 0x0026  # RFC 5780 section 7.6
    RESPONSE_PORT = 0x0027  # RFC 5780 section 7.5
    XOR_MAPPED_ADDRESS_OLD = 0x8020  # pre-RFC 5389 drafts, still sent by some servers
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 section 7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 section 7.4
    ICE_CONTROLLED = 0x8029  # RFC 8445 (ICE)
    ICE_CONTROLLING = 0x802A  # RFC 8445 (ICE)


def is_comprehension_required(attr_type: int) -> bool:
    """RFC 8489 section 15: types 0x0000-0x7FFF must be understood by the receiver."""
    return attr_type < 0x8000
