"""Shared wire helper of the PCP and NAT-PMP codecs (pure)."""

from __future__ import annotations

from stunturn_diag.errors import PortMapEncodeError


def uint(value: int, bits: int, what: str) -> int:
    """``value`` if it is an unsigned ``bits``-bit integer, else PortMapEncodeError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise PortMapEncodeError(f"{what} must be an unsigned {bits}-bit integer, got {value!r}")
    return value
