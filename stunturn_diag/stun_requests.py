"""STUN requests with fresh random transaction ids: the runners' side of
:mod:`stunturn_diag.sansio.stun.message`, which takes its random bytes from the caller."""

from __future__ import annotations

import os

from stunturn_diag.sansio.stun.message import StunMessage, binding_request, new_transaction_id


def fresh_transaction_id(classic: bool = False) -> bytes:
    """A new transaction id from ``os.urandom`` (RFC 8489 section 5; 16 bytes if ``classic``)."""
    return new_transaction_id(os.urandom, classic)


def fresh_binding_request(**options) -> StunMessage:
    """:func:`binding_request` with a fresh transaction id; ``options`` as there."""
    return binding_request(fresh_transaction_id(), **options)
