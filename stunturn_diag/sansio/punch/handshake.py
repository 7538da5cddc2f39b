"""The punch handshake (wire version 3): CPace keyed on the access key, bound to the match.

Pure: no sockets, no clocks, no random source of its own: the caller passes
``entropy`` (the runners pass ``os.urandom``), the source of this side's 32-byte CPace
scalar. The socket driver
for TCP streams is :mod:`stunturn_diag.punch.handshake_runner`; the UDP runner feeds
datagrams through :mod:`.engine`.

Both peers know the access key ``K``; the signaling server gave both the same
``match_id`` and never saw ``K`` (it saw only the rendezvous identifier of
:mod:`.keys`). The handshake is CPace (draft-irtf-cfrg-cpace, suite
CPACE-X25519-SHA512, :mod:`.cpace`), the initiator as party A, the receiver as B:

* inputs: ``PRS`` = the access key under its own label (:func:`pake_password`, not
  the rendezvous id), ``CI`` = ``lv_cat("stunturn-punch/v3|initiator",
  "...|receiver")`` (both roles), ``sid`` = 16 bytes of SHA-256 over the version
  label and ``match_id`` (:func:`session_id`), ``ADa = ADb`` = empty. The generator
  is Elligator 2 of the hash of all of them, so a share belongs to one key, one
  match, one pair of roles and one version. :func:`start_pake` draws the scalar and
  prepares ``PRS`` before the match; the generator and the share (one X25519) are
  computed when the match is known;
* ``HELLO(role, Y)`` carries this side's share (32 bytes, an X25519 u-coordinate).
  It is identical on every retransmission and on every candidate path, so loss and
  duplication are harmless (idempotent). One CPace state per handshake: the first
  usable peer share is the one this handshake uses; another share is dropped and
  counted (``stale``), which bounds an active attacker to **one online guess of the
  key per handshake attempt**. A share that is no canonical u-coordinate, our own
  share reflected, or a low-order point (``K`` all-zero, which CPace aborts on) is
  dropped first (``malformed``) and does not use the state up;
* ``PROOF(role, Y, flags, mac)``: key confirmation with
  ``mac = HMAC-SHA256(confirm_key[sender], "proof" | role | flags | transcript)``,
  where ``transcript = SHA-256(label | match_id | Y_initiator | Y_receiver)`` and the
  keys come from HKDF-SHA256 (RFC 5869) over CPace's ISK with the transcript as salt.
  PROOF repeats the share, so a PROOF alone lets a side finish;
* a side is *complete* when it verified the peer's PROOF (the peer knows ``K`` and
  used our fresh share: no replay), *confirmed* once the peer's PROOF carries the
  VERIFIED flag (the peer verified ours).

A recorded handshake does not help guessing ``K`` offline: checking a guess needs
the discrete log of one of the shares to the guessed generator (CPace's security
argument), so every transcript is consistent with every key. Session keys
(:class:`.seal.Session`, TCP records) are per direction and fresh per handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from stunturn_diag.sansio.punch import cpace
from stunturn_diag.errors import AuthenticationError
from stunturn_diag.sansio.punch.seal import KEY_LEN, ReplayWindow, Session
from stunturn_diag.sansio.punch.wire import (FRAME_KINDS, HEADER, MAGIC, VERSION, Counters, Kind, Role, has_magic,
                   header, is_handshake, kind_of, version_mismatch_message)

#: CPace share: an X25519 u-coordinate
SHARE_LEN = cpace.FIELD_BYTES
SCALAR_LEN = cpace.FIELD_BYTES
MAC_LEN = 32
HELLO_LEN = HEADER.size + SHARE_LEN
PROOF_LEN = HEADER.size + SHARE_LEN + MAC_LEN
#: flag bit in a PROOF: the sender has verified our PROOF already
FLAG_VERIFIED = 0x01
LABEL = b"stunturn-punch/v3"
_KEYS = ("confirm_initiator", "confirm_receiver", "initiator->receiver", "receiver->initiator")


def pake_password(key: str | bytes) -> bytes:
    """CPace's PRS: the access key under its own label (not the rendezvous id)."""
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return LABEL + b" pake\x00" + raw


def identity(role: Role) -> bytes:
    return LABEL + b"|" + role.value.encode()


#: CPace's channel identifier: both roles (the same on both sides)
CHANNEL_ID = cpace.lv_cat(identity(Role.INITIATOR), identity(Role.RECEIVER))
#: associated data: the roles and version are in CI and sid already
AD = b""


def session_id(match_id: str) -> bytes:
    """CPace's sid: the match under the version label (16 bytes)."""
    mid = match_id.encode("utf-8")
    return hashlib.sha256(LABEL + b" sid\x00" + struct.pack("!H", len(mid)) + mid).digest()[:16]


class StartedPake:
    """This side's CPace scalar and PRS, prepared ahead of the match (single use).

    The generator depends on the match (sid), so the share itself is computed by
    :class:`Handshake` (one Elligator 2 map and one X25519, well under a millisecond once
    the crypto backend is warm: starting one warms it, :func:`cpace.warm_up`).
    """

    def __init__(self, key: str | bytes, role: Role | str, *,
                 entropy: Callable[[int], bytes]) -> None:
        self.role = Role(role)
        self.prs = pake_password(key)
        self._scalar = bytes(entropy(SCALAR_LEN))
        if len(self._scalar) != SCALAR_LEN:
            raise ValueError(f"the entropy source must return {SCALAR_LEN} bytes")
        self._taken = False
        cpace.warm_up(self._scalar)     # the backend's first-use cost, before the match

    def take(self) -> tuple[bytes, bytes]:
        """(PRS, scalar), once."""
        if self._taken:
            raise ValueError("a started PAKE serves one handshake only")
        self._taken = True
        scalar, self._scalar = self._scalar, b""
        return self.prs, scalar


def start_pake(key: str | bytes, role: Role | str, *,
               entropy: Callable[[int], bytes]) -> StartedPake:
    return StartedPake(key, role, entropy=entropy)


def transcript_hash(match_id: str, share_initiator: bytes, share_receiver: bytes) -> bytes:
    mid = match_id.encode("utf-8")
    return hashlib.sha256(LABEL + b" transcript\x00" + struct.pack("!H", len(mid)) + mid +
                          share_initiator + share_receiver).digest()


def schedule(pake_key: bytes, transcript: bytes) -> dict[str, bytes]:
    """Confirmation and traffic keys from CPace's ISK (HKDF-SHA256, RFC 5869)."""
    okm = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN * len(_KEYS), salt=transcript,
               info=LABEL + b" keys").derive(pake_key)
    return {name: okm[i * KEY_LEN:(i + 1) * KEY_LEN] for i, name in enumerate(_KEYS)}


@dataclass
class HandshakeOutcome:
    """What :meth:`Handshake.handle` made of one message."""

    accepted: bool
    reply: bytes | None = None
    completed_now: bool = False
    why: str = ""


class Handshake:
    """The pure handshake state machine of one side (no sockets, no clocks)."""

    def __init__(self, key: str | bytes, match_id: str, role: Role | str, *,
                 entropy: Callable[[int], bytes] | None = None,
                 started: StartedPake | None = None) -> None:
        """``started``: this side's :func:`start_pake` for ``key``; else one is started
        now from ``entropy`` (one of the two is needed)."""
        self.role = Role(role)
        self.match_id = match_id
        if started is None:
            if entropy is None:
                raise TypeError("Handshake needs entropy (e.g. os.urandom) or started")
            started = StartedPake(key, self.role, entropy=entropy)
        if started.role is not self.role:
            raise ValueError("the started PAKE is for the other role")
        prs, self._scalar = started.take()
        self._sid = session_id(match_id)
        self.share = cpace.share(self._scalar, cpace.calculate_generator(prs, CHANNEL_ID,
                                                                         self._sid))
        self.peer_share: bytes | None = None
        self._keys: dict[str, bytes] | None = None
        self._transcript = b""
        self.complete = False
        self.confirmed = False
        #: a version other than ours seen from the peer (None: none)
        self.peer_version: int | None = None
        self.counters = Counters()

    # -- building messages -------------------------------------------------
    def hello(self) -> bytes:
        """Our HELLO (identical on every retransmission)."""
        return header(Kind.HELLO, self.role) + self.share

    def proof(self) -> bytes:
        """Our PROOF (needs the peer's share); flagged VERIFIED once we verified theirs."""
        flags = FLAG_VERIFIED if self.complete else 0
        return header(Kind.PROOF, self.role, flags) + self.share + \
            self._proof_mac(self.role, flags)

    def _proof_mac(self, sender: Role, flags: int) -> bytes:
        assert self._keys is not None
        return hmac.new(self._keys[f"confirm_{sender.value}"],
                        b"proof" + bytes([sender.byte, flags]) + self._transcript,
                        hashlib.sha256).digest()

    # -- receiving -----------------------------------------------------------
    def _absorb(self, share: bytes) -> str | None:
        """Finish CPace with the first usable peer share; why not, else None."""
        if self.peer_share is not None:
            return None if hmac.compare_digest(share, self.peer_share) else "another-share"
        if not cpace.is_canonical(share) or hmac.compare_digest(share, self.share):
            return "bad-share"
        try:
            k = cpace.shared_point(self._scalar, share)
        except cpace.CPaceError:
            return "bad-share"      # a low-order point: CPace aborts, the state stays unused
        self.peer_share = share
        ya, yb = (self.share, share) if self.role is Role.INITIATOR else (share, self.share)
        isk = cpace.isk(self._sid, k, ya, AD, yb, AD)
        self._transcript = transcript_hash(self.match_id, ya, yb)
        self._keys = schedule(isk, self._transcript)
        return None

    def handle(self, data: bytes) -> HandshakeOutcome:
        """Process one received message; stray or forged input is dropped and counted."""
        if has_magic(data) and data[4] != VERSION:
            self.counters.old_version += 1
            self.peer_version = data[4]
            return HandshakeOutcome(False, why=f"version-{data[4]}")
        if not is_handshake(data) or data[5] not in (Kind.HELLO, Kind.PROOF):
            self.counters.malformed += 1
            return HandshakeOutcome(False, why="malformed")
        _, _, kind, role_byte, flags = HEADER.unpack_from(data)
        if role_byte != self.role.other.byte:
            self.counters.wrong_role += 1
            return HandshakeOutcome(False, why="wrong-role")
        if len(data) != (HELLO_LEN if kind == Kind.HELLO else PROOF_LEN):
            self.counters.malformed += 1
            return HandshakeOutcome(False, why="malformed")
        why = self._absorb(data[HEADER.size:HEADER.size + SHARE_LEN])
        if why == "bad-share":
            self.counters.malformed += 1
            return HandshakeOutcome(False, why=why)
        if why is not None:
            self.counters.stale += 1
            return HandshakeOutcome(False, why=why)
        if kind == Kind.HELLO:
            return HandshakeOutcome(True, reply=self.proof(), why="hello")
        mac = data[HEADER.size + SHARE_LEN:]
        if not hmac.compare_digest(mac, self._proof_mac(self.role.other, flags)):
            self.counters.bad_proof += 1
            return HandshakeOutcome(False, why="bad-proof")
        completed_now = not self.complete
        self.complete = True
        if flags & FLAG_VERIFIED:
            self.confirmed = True
            # the peer is done; answer only if it cannot know we are
            return HandshakeOutcome(True, reply=self.proof() if completed_now else None,
                           completed_now=completed_now, why="proof")
        return HandshakeOutcome(True, reply=self.proof(), completed_now=completed_now, why="proof")

    def failure_reason(self) -> tuple[str, str] | None:
        """(reason, message) if the input seen so far explains a failure, else None."""
        c = self.counters
        if self.peer_version is not None and not self.complete:
            return "version-mismatch", version_mismatch_message(self.peer_version)
        if c.bad_proof or c.wrong_role or c.stale:
            return ("auth-failed", "the peer's key confirmation did not verify "
                    f"({c.bad_proof + c.wrong_role + c.stale} dropped): the peer uses another "
                    "access key, or a third party is interfering")
        return None

    # -- after completion ----------------------------------------------------
    def traffic_keys(self) -> tuple[bytes, bytes]:
        """(send key, receive key) of this side (only after completion)."""
        if not self.complete or self._keys is None:
            raise AuthenticationError("handshake not complete",
                                      hint="use the session keys only after the peer's proof "
                                           "verified")
        i2r, r2i = self._keys["initiator->receiver"], self._keys["receiver->initiator"]
        return (i2r, r2i) if self.role is Role.INITIATOR else (r2i, i2r)

    def session(self) -> Session:
        """Per-direction AEAD keys for UDP frames (only after completion)."""
        send, recv = self.traffic_keys()
        return Session(self.role, send, recv)


__all__ = ["Handshake", "StartedPake", "start_pake", "session_id", "pake_password", "HandshakeOutcome",
           "Role", "Kind", "Counters", "Session", "ReplayWindow",
           "FRAME_KINDS", "HELLO_LEN", "PROOF_LEN", "MAGIC", "VERSION", "is_handshake",
           "kind_of", "has_magic"]
