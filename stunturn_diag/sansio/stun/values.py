"""Decoded attribute value types (RFC 8489 section 14, RFC 5780 section 7)."""

from __future__ import annotations

from typing import NamedTuple

from stunturn_diag.sansio.netaddr import Address  # MAPPED-ADDRESS family, RFC 8489 section 14.1


class ChangeRequest(NamedTuple):
    """CHANGE-REQUEST flags (RFC 5780 section 7.2)."""

    change_ip: bool = False
    change_port: bool = False


class ErrorCode(NamedTuple):
    """ERROR-CODE value (RFC 8489 section 14.8): code 300..699 and a reason phrase."""

    code: int
    reason: str = ""
