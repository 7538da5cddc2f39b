"""The decoded STUN message (RFC 8489 section 5) and convenience builders."""

from __future__ import annotations

from typing import Callable

from dataclasses import dataclass, field

from stunturn_diag.sansio.stun.constants import (
    CLASSIC_TRANSACTION_ID_LENGTH,
    MAGIC_COOKIE_BYTES,
    TRANSACTION_ID_LENGTH,
    AttrType,
    MessageClass,
    Method,
    is_comprehension_required,
)
from stunturn_diag.sansio.stun.attributes import CODECS
from stunturn_diag.sansio.stun.values import Address, ChangeRequest, ErrorCode


@dataclass
class StunMessage:
    """One STUN message.

    ``transaction_id`` has 12 bytes (RFC 5389/8489, magic cookie present) or 16
    bytes (classic RFC 3489, no cookie). ``attributes`` is the ordered list of
    ``(type, value)``; known types carry decoded values (see ARCHITECTURE.md),
    unknown types raw bytes. After :func:`decode`, attributes that RFC 8489
    section 14.5 says to ignore (after MESSAGE-INTEGRITY) are not listed.
    """

    method: int
    msg_class: MessageClass
    transaction_id: bytes
    attributes: list[tuple[int, object]] = field(default_factory=list)

    @property
    def classic(self) -> bool:
        """True for an RFC 3489 message without magic cookie (16-byte transaction id)."""
        return len(self.transaction_id) == CLASSIC_TRANSACTION_ID_LENGTH

    def get(self, attr_type: int, default: object = None) -> object:
        """Value of the first ``attr_type`` attribute (RFC 8489 section 14: later ones may be ignored)."""
        for kind, value in self.attributes:
            if kind == attr_type:
                return value
        return default

    def add(self, attr_type: int, value: object) -> "StunMessage":
        """Append an attribute; returns self so calls chain."""
        self.attributes.append((attr_type, value))
        return self

    @property
    def mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS (RFC 8489 section 14.2), else MAPPED-ADDRESS (section 14.1)."""
        for kind in (AttrType.XOR_MAPPED_ADDRESS, AttrType.MAPPED_ADDRESS,
                     AttrType.XOR_MAPPED_ADDRESS_OLD):
            value = self.get(kind)
            if value is not None:
                return value  # type: ignore[return-value]
        return None

    @property
    def response_origin(self) -> Address | None:
        """RESPONSE-ORIGIN (RFC 5780 section 7.3), else SOURCE-ADDRESS (RFC 3489 section 11.2.5)."""
        value = self.get(AttrType.RESPONSE_ORIGIN)
        return value if value is not None else self.get(AttrType.SOURCE_ADDRESS)  # type: ignore[return-value]

    @property
    def other_address(self) -> Address | None:
        """OTHER-ADDRESS (RFC 5780 section 7.4), else CHANGED-ADDRESS (RFC 3489 section 11.2.3)."""
        value = self.get(AttrType.OTHER_ADDRESS)
        return value if value is not None else self.get(AttrType.CHANGED_ADDRESS)  # type: ignore[return-value]

    @property
    def change_request(self) -> ChangeRequest:
        """CHANGE-REQUEST flags (RFC 5780 section 7.2); both False when absent."""
        value = self.get(AttrType.CHANGE_REQUEST)
        return value if value is not None else ChangeRequest(False, False)  # type: ignore[return-value]

    @property
    def response_port(self) -> int | None:
        """RESPONSE-PORT (RFC 5780 section 7.5)."""
        return self.get(AttrType.RESPONSE_PORT)  # type: ignore[return-value]

    @property
    def error(self) -> ErrorCode | None:
        """ERROR-CODE (RFC 8489 section 14.8)."""
        return self.get(AttrType.ERROR_CODE)  # type: ignore[return-value]

    @property
    def software(self) -> str | None:
        """SOFTWARE (RFC 8489 section 14.14)."""
        return self.get(AttrType.SOFTWARE)  # type: ignore[return-value]

    @property
    def unknown_comprehension_required(self) -> list[int]:
        """Unknown types in 0x0000-0x7FFF, in order, without repeats (RFC 8489 section 15).

        A server answers a request carrying any of these with a 420 error and an
        UNKNOWN-ATTRIBUTES attribute listing them (RFC 8489 section 6.3.1.1).
        """
        seen: list[int] = []
        for kind, _ in self.attributes:
            if is_comprehension_required(kind) and kind not in CODECS and kind not in seen:
                seen.append(kind)
        return seen


def new_transaction_id(random_bytes: Callable[[int], bytes], classic: bool = False) -> bytes:
    """12 random bytes (RFC 8489 section 5); ``classic=True``: 16 bytes for RFC 3489.
    ``random_bytes(n)`` is the caller's source (``os.urandom`` in the runners).

    A classic id never starts with the magic cookie, so it cannot be mistaken
    for an RFC 5389 message; a source that only yields such ids raises ValueError.
    """
    if not classic:
        return random_bytes(TRANSACTION_ID_LENGTH)
    for _ in range(64):
        tid = random_bytes(CLASSIC_TRANSACTION_ID_LENGTH)
        if tid[:4] != MAGIC_COOKIE_BYTES:
            return tid
    raise ValueError("the random source keeps yielding the magic cookie")


def binding_request(transaction_id: bytes, *, change_ip: bool = False,
                    change_port: bool = False, response_port: int | None = None,
                    padding: int = 0, software: str | None = None) -> StunMessage:
    """A Binding request (RFC 8489 section 6.1) with optional RFC 5780 attributes.

    CHANGE-REQUEST is included only when a flag is set (RFC 5780 section 7.2);
    RESPONSE-PORT (section 7.5) when given; PADDING of ``padding`` zero bytes
    (section 7.6) when > 0. A 16-byte ``transaction_id`` makes a classic
    RFC 3489 request.
    """
    msg = StunMessage(Method.BINDING, MessageClass.REQUEST, transaction_id)
    if software is not None:
        msg.add(AttrType.SOFTWARE, software)
    if change_ip or change_port:
        msg.add(AttrType.CHANGE_REQUEST, ChangeRequest(change_ip, change_port))
    if response_port is not None:
        msg.add(AttrType.RESPONSE_PORT, response_port)
    if padding > 0:
        msg.add(AttrType.PADDING, bytes(padding))
    return msg
