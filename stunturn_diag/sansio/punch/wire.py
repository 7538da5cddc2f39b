"""Wire vocabulary of the punched path (pure): roles, message kinds, the versioned header.

Every message the two peers exchange after the match (handshake messages and
sealed data frames) starts with the same 8-byte header::

    MAGIC (4) | VERSION (1) | kind (1) | sender role (1) | flags (1)

``VERSION`` changes whenever the handshake or the sealing changes in a way an
older peer cannot follow; a peer that sees another version reports it (reason
``version-mismatch``) instead of silently falling back.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

MAGIC = b"\x8fSTP"
#: 1: HMAC handshake over a PBKDF2-stretched key, MAC-only UDP frames (before issue 10)
#: 2: SPAKE2 handshake with key confirmation, AEAD frames and TCP records
#: 3: CPace (X25519) instead of SPAKE2; confirmation, frames and records as in 2
VERSION = 3
#: MAGIC, version, type, role, flags
HEADER = struct.Struct("!4sBBBB")


class Role(enum.StrEnum):
    """The two roles of a match (the signaling API's ``role``; formats as its value)."""

    INITIATOR = "initiator"
    RECEIVER = "receiver"

    @property
    def byte(self) -> int:
        return 0 if self is Role.INITIATOR else 1

    @property
    def other(self) -> "Role":
        return Role.RECEIVER if self is Role.INITIATOR else Role.INITIATOR


class Kind(enum.IntEnum):
    """Message types on the punched path."""

    HELLO = 1
    PROOF = 2
    DATA = 3
    KEEPALIVE = 4
    FIN = 5      # no more data from the sender (half-close)
    BYE = 6      # the sender closes the channel


FRAME_KINDS = (Kind.DATA, Kind.KEEPALIVE, Kind.FIN, Kind.BYE)


def header(kind: int, role: Role, flags: int = 0) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, role.byte, flags)


def has_magic(data: bytes) -> bool:
    """One of ours, of any version."""
    return len(data) >= HEADER.size and data[:4] == MAGIC


def is_handshake(data: bytes) -> bool:
    """Cheap check: one of ours (any kind) in *this* version?"""
    return has_magic(data) and data[4] == VERSION


def kind_of(data: bytes) -> int | None:
    return data[5] if is_handshake(data) else None


def version_mismatch_message(version: int) -> str:
    return (f"the peer speaks handshake v{version}, this side v{VERSION}; "
            "upgrade both sides to the same stunturn-diag version")


@dataclass
class Counters:
    """Dropped-and-counted input, by cause."""

    malformed: int = 0
    bad_tag: int = 0
    bad_proof: int = 0
    wrong_role: int = 0
    stale: int = 0
    replayed: int = 0
    old_version: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def dropped(self) -> int:
        return sum(self.__dict__.values())
