"""Sans-IO STUN codec: RFC 8489 (and 5389), RFC 5780 attributes, classic RFC 3489.

No sockets, no clocks, no Scapy here (the tests' Scapy layers live in the test kit,
``stunturn_testkit/scapy_layers.py``).
"""

from stunturn_diag.sansio.stun.attributes import CODECS as KNOWN_ATTRIBUTES
from stunturn_diag.sansio.stun.codec import decode, encode, join_type, looks_like_stun, message_length, split_type
from stunturn_diag.sansio.stun.constants import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    AttrType,
    MessageClass,
    Method,
    is_comprehension_required,
)
from stunturn_diag.sansio.stun.integrity import long_term_key, saslprep, short_term_key
from stunturn_diag.sansio.stun.message import StunMessage, binding_request, new_transaction_id
from stunturn_diag.sansio.stun.values import Address, ChangeRequest, ErrorCode

__all__ = [
    "MAGIC_COOKIE", "FINGERPRINT_XOR", "HEADER_LENGTH", "Method", "MessageClass", "AttrType",
    "StunMessage", "Address", "ChangeRequest", "ErrorCode", "decode", "encode",
    "looks_like_stun", "message_length", "new_transaction_id", "binding_request",
    "split_type", "join_type", "is_comprehension_required", "KNOWN_ATTRIBUTES",
    "long_term_key", "short_term_key", "saslprep",
]
