"""Decoded attribute value types (RFC 8489 section 14, RFC 5780 section 7)."""

from __future__ import annotations

from typing import NamedTuple

#: (ip text, port); IPv4 or IPv6 (MAPPED-ADDRESS family, RFC 8489 section 14.1).
Address = tuple[str, int]


class ChangeRequest(NamedTuple):
    """CHANGE-REQUEST flags (RFC 5780 section 7.2)."""

    change_ip: bool = False
    change_port: bool = False


class ErrorCode(NamedTuple):
    """ERROR-CODE value (RFC 8489 section 14.8): code 300..699 and a reason phrase."""

    code: int
    reason: str = ""
