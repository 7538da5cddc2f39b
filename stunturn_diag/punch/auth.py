"""Authenticated handshake over a punched path, and the UDP data-frame MAC (sans-IO).

Both peers know the access key ``K``; the signaling server gave both the same
``match_id``. The handshake proves key knowledge without sending ``K``:

* every key is derived per match: ``base = HMAC-SHA256(PBKDF2(K), "stunturn-punch/v1" |
  match_id)`` (HMAC per RFC 2104, PBKDF2 per RFC 8018 against offline guessing of a
  weak ``K`` from a recorded handshake; one match's keys are useless for another);
* each side sends ``HELLO(role, nonce, tag)``; ``tag`` is an HMAC over role and
  nonce, so packets from anyone without the key are dropped and counted;
* on a peer HELLO a side answers ``PROOF(role, own nonce, peer nonce, mac)`` where
  ``mac = HMAC(base, "proof" | role | flags | nonce_initiator | nonce_receiver)``.
  Fresh nonces from both sides bind it to this exchange (no replay), the role
  byte stops reflection, ``match_id`` in ``base`` binds it to the match;
* a side is *complete* when it verified a PROOF that carries its own nonce: the
  peer then provably received our packet and we received theirs (both directions);
  it is *confirmed* once the peer's PROOF says the peer verified ours too (flag).

After the handshake, UDP data travels in frames with a sequence number and a
truncated HMAC-SHA256 tag under a per-direction session key; a sliding replay
window (as in RFC 4303 section 3.4.3) drops duplicates. Frames are authenticated,
not encrypted.

Everything here is pure except :func:`authenticate_stream`, a thin driver that runs
the same handshake over a connected TCP stream (used by the TCP punch engine).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from ..errors import AuthenticationError, PunchError
from ..netio import PeerClosed, recv_exact

MAGIC = b"\x8fSTP"
VERSION = 1
NONCE_LEN = 16
TAG_LEN = 16
MAC_LEN = 32
#: MAGIC, version, type, role, flags
HEADER = struct.Struct("!4sBBBB")
SEQ = struct.Struct("!Q")
HELLO_LEN = HEADER.size + NONCE_LEN + TAG_LEN
PROOF_LEN = HEADER.size + 2 * NONCE_LEN + MAC_LEN
FRAME_OVERHEAD = HEADER.size + SEQ.size + TAG_LEN
#: flag bit in a PROOF: the sender has verified our PROOF already
FLAG_VERIFIED = 0x01
REPLAY_WINDOW = 64
#: PBKDF2 iterations of the access-key stretching (about 50 ms once per key)
KDF_ITERATIONS = 200_000


class Role(str, enum.Enum):
    """The two roles of a match (the signaling API's ``role``)."""

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


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


@functools.lru_cache(maxsize=32)
def _stretch(raw: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", raw, b"stunturn-punch/v1 access key", KDF_ITERATIONS)


def stretch_key(key: str | bytes) -> bytes:
    """Match-independent key stretching (PBKDF2-HMAC-SHA256, RFC 8018 section 5.2).

    Someone who recorded a handshake can test guesses of the access key offline;
    stretching makes each guess cost ``KDF_ITERATIONS`` HMACs. Cached, so callers
    warm it up before the match (the punch API does) and the punch stays fast.
    """
    return _stretch(key.encode("utf-8") if isinstance(key, str) else bytes(key))


def derive_base_key(key: str | bytes, match_id: str) -> bytes:
    """Per-match base key: HMAC-SHA256(stretched access key, label | match_id)."""
    return _mac(stretch_key(key), b"stunturn-punch/v1\x00", match_id.encode("utf-8"))


def is_handshake(data: bytes) -> bool:
    """Cheap check: does this datagram look like one of ours (any kind)?"""
    return len(data) >= HEADER.size and data[:4] == MAGIC and data[4] == VERSION


def kind_of(data: bytes) -> int | None:
    return data[5] if is_handshake(data) else None


@dataclass
class Counters:
    """Dropped-and-counted input, by cause."""

    malformed: int = 0
    bad_tag: int = 0
    bad_proof: int = 0
    wrong_role: int = 0
    stale: int = 0
    replayed: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def dropped(self) -> int:
        return sum(self.__dict__.values())


@dataclass
class Outcome:
    """What :meth:`Handshake.handle` made of one message."""

    accepted: bool
    reply: bytes | None = None
    completed_now: bool = False
    why: str = ""


class Handshake:
    """The pure handshake state machine of one side (no sockets, no clocks)."""

    def __init__(self, key: str | bytes, match_id: str, role: Role | str, *,
                 nonce: bytes | None = None) -> None:
        self.role = Role(role)
        self.match_id = match_id
        self._base = derive_base_key(key, match_id)
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_LEN)
        if len(self.nonce) != NONCE_LEN:
            raise ValueError("nonce must be 16 bytes")
        self.peer_nonce: bytes | None = None
        self.complete = False
        self.confirmed = False
        self.counters = Counters()

    # -- building messages -------------------------------------------------
    def _hello_tag(self, role: Role, nonce: bytes) -> bytes:
        return _mac(self._base, b"hello", bytes([role.byte]), nonce)[:TAG_LEN]

    def _proof_mac(self, role: Role, flags: int, nonce_i: bytes, nonce_r: bytes) -> bytes:
        return _mac(self._base, b"proof", bytes([role.byte, flags]), nonce_i, nonce_r)

    def _ordered(self, mine: bytes, theirs: bytes, sender: Role) -> tuple[bytes, bytes]:
        return (mine, theirs) if sender is Role.INITIATOR else (theirs, mine)

    def hello(self) -> bytes:
        """Our HELLO (identical on every retransmission)."""
        return HEADER.pack(MAGIC, VERSION, Kind.HELLO, self.role.byte, 0) + self.nonce + \
            self._hello_tag(self.role, self.nonce)

    def proof(self, peer_nonce: bytes) -> bytes:
        """Our PROOF over ``peer_nonce``; flagged VERIFIED when we completed with it."""
        flags = FLAG_VERIFIED if self.complete and peer_nonce == self.peer_nonce else 0
        ni, nr = self._ordered(self.nonce, peer_nonce, self.role)
        return HEADER.pack(MAGIC, VERSION, Kind.PROOF, self.role.byte, flags) + self.nonce + \
            peer_nonce + self._proof_mac(self.role, flags, ni, nr)

    # -- receiving -----------------------------------------------------------
    def handle(self, data: bytes) -> Outcome:
        """Process one received message; stray or forged input is dropped and counted."""
        if not is_handshake(data) or data[5] not in (Kind.HELLO, Kind.PROOF):
            self.counters.malformed += 1
            return Outcome(False, why="malformed")
        _, _, kind, role_byte, flags = HEADER.unpack_from(data)
        if role_byte != self.role.other.byte:
            self.counters.wrong_role += 1
            return Outcome(False, why="wrong-role")
        sender = self.role.other
        if kind == Kind.HELLO:
            if len(data) != HELLO_LEN:
                self.counters.malformed += 1
                return Outcome(False, why="malformed")
            nonce = data[HEADER.size:HEADER.size + NONCE_LEN]
            tag = data[HEADER.size + NONCE_LEN:]
            if not hmac.compare_digest(tag, self._hello_tag(sender, nonce)):
                self.counters.bad_tag += 1
                return Outcome(False, why="bad-tag")
            if self.complete and nonce != self.peer_nonce:
                self.counters.stale += 1
                return Outcome(False, why="stale-hello")
            return Outcome(True, reply=self.proof(nonce), why="hello")
        if len(data) != PROOF_LEN:
            self.counters.malformed += 1
            return Outcome(False, why="malformed")
        off = HEADER.size
        their = data[off:off + NONCE_LEN]
        mine = data[off + NONCE_LEN:off + 2 * NONCE_LEN]
        mac = data[off + 2 * NONCE_LEN:]
        if mine != self.nonce:
            self.counters.stale += 1
            return Outcome(False, why="not-our-nonce")
        if self.complete and their != self.peer_nonce:
            self.counters.stale += 1
            return Outcome(False, why="stale-proof")
        ni, nr = self._ordered(their, mine, sender)
        if not hmac.compare_digest(mac, self._proof_mac(sender, flags, ni, nr)):
            self.counters.bad_proof += 1
            return Outcome(False, why="bad-proof")
        completed_now = not self.complete
        self.complete = True
        self.peer_nonce = their
        if flags & FLAG_VERIFIED:
            self.confirmed = True
            # the peer is done; answer only if it cannot know we are
            return Outcome(True, reply=self.proof(their) if completed_now else None,
                           completed_now=completed_now, why="proof")
        return Outcome(True, reply=self.proof(their), completed_now=completed_now, why="proof")

    # -- after completion ----------------------------------------------------
    def session(self) -> "Session":
        """Per-direction frame keys for this match (only after completion)."""
        if not self.complete or self.peer_nonce is None:
            raise AuthenticationError("handshake not complete",
                                      hint="call session() only after the peer's proof verified")
        ni, nr = self._ordered(self.nonce, self.peer_nonce, self.role)
        master = _mac(self._base, b"session", ni, nr)
        i2r = _mac(master, b"initiator->receiver")
        r2i = _mac(master, b"receiver->initiator")
        send, recv = (i2r, r2i) if self.role is Role.INITIATOR else (r2i, i2r)
        return Session(self.role, send, recv)


@dataclass
class ReplayWindow:
    """Sliding anti-replay window over 64-bit sequence numbers (RFC 4303 section 3.4.3)."""

    size: int = REPLAY_WINDOW
    top: int = -1
    bitmap: int = 0

    def check_and_set(self, seq: int) -> bool:
        """True if ``seq`` is new (and records it); False for a duplicate or too old."""
        if seq > self.top:
            shift = seq - self.top
            # a jump past the window leaves only seq: never shift by a peer-chosen 2**63
            kept = (self.bitmap << shift) & ((1 << self.size) - 1) if shift < self.size else 0
            self.bitmap = kept | 1
            self.top = seq
            return True
        offset = self.top - seq
        if offset >= self.size:
            return False
        bit = 1 << offset
        if self.bitmap & bit:
            return False
        self.bitmap |= bit
        return True


@dataclass
class Session:
    """Seals and opens authenticated UDP frames (DATA, KEEPALIVE, FIN, BYE)."""

    role: Role
    send_key: bytes
    recv_key: bytes
    next_seq: int = 0
    window: ReplayWindow = field(default_factory=ReplayWindow)
    counters: Counters = field(default_factory=Counters)

    def seal(self, kind: Kind, payload: bytes = b"") -> bytes:
        if kind not in FRAME_KINDS:
            raise ValueError(f"not a frame kind: {kind!r}")
        head = HEADER.pack(MAGIC, VERSION, kind, self.role.byte, 0) + SEQ.pack(self.next_seq)
        self.next_seq += 1
        body = head + payload
        return body + _mac(self.send_key, body)[:TAG_LEN]

    def open(self, data: bytes) -> tuple[Kind, bytes] | None:
        """(kind, payload) of an authentic, fresh frame; None (counted) otherwise."""
        if not is_handshake(data) or len(data) < FRAME_OVERHEAD or data[5] not in FRAME_KINDS:
            self.counters.malformed += 1
            return None
        if data[6] != self.role.other.byte:
            self.counters.wrong_role += 1
            return None
        body, tag = data[:-TAG_LEN], data[-TAG_LEN:]
        if not hmac.compare_digest(tag, _mac(self.recv_key, body)[:TAG_LEN]):
            self.counters.bad_tag += 1
            return None
        (seq,) = SEQ.unpack_from(data, HEADER.size)
        if not self.window.check_and_set(seq):
            self.counters.replayed += 1
            return None
        return Kind(data[5]), body[HEADER.size + SEQ.size:]


# -- thin stream driver (the only I/O in this module) -------------------------

def _connection_lost(exc: OSError) -> PunchError:
    return PunchError(f"connection failed during authentication: {exc}",
                      reason="auth-connection-lost")


def _recv_exact(sock: socket.socket, n: int, deadline: float, clock) -> bytes:
    try:
        return recv_exact(sock, n, deadline, what="authentication", clock=clock)
    except TimeoutError:
        raise PunchError("authentication timed out: the peer did not answer the handshake",
                         hint="check that both sides use the same access key and server",
                         reason="auth-timeout") from None
    except PeerClosed:
        raise PunchError("the peer closed the connection during authentication",
                         hint="the peer may use a different access key",
                         reason="auth-connection-lost") from None
    except OSError as exc:
        raise _connection_lost(exc) from None


def _send_all(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        raise _connection_lost(exc) from None


def authenticate_stream(sock: socket.socket, key: str | bytes, match_id: str,
                        role: Role | str, deadline: float, *, clock=time.monotonic,
                        nonce: bytes | None = None) -> Session:
    """Run the handshake over a connected stream socket; return the session keys.

    Each side sends HELLO, reads the peer's HELLO, sends PROOF, reads the peer's
    PROOF (no deadlock: both write before they read). ``deadline`` is on
    ``clock`` (``time.monotonic``). Raises :class:`AuthenticationError` if the peer
    does not prove the key, :class:`PunchError` (reason ``auth-timeout`` /
    ``auth-connection-lost``) on I/O trouble. The socket's timeout is restored.
    """
    hs = Handshake(key, match_id, role, nonce=nonce)
    old_timeout = sock.gettimeout()
    try:
        _send_all(sock, hs.hello())
        hello = _recv_exact(sock, HELLO_LEN, deadline, clock)
        out = hs.handle(hello)
        if not out.accepted or out.reply is None:
            raise AuthenticationError(
                f"the peer's hello did not verify ({out.why})",
                hint="both sides must use the same access key", reason="auth-failed")
        _send_all(sock, out.reply)
        proof = _recv_exact(sock, PROOF_LEN, deadline, clock)
        out = hs.handle(proof)
        if not out.accepted or not hs.complete:
            raise AuthenticationError(
                f"the peer's proof did not verify ({out.why})",
                hint="both sides must use the same access key", reason="auth-failed")
        return hs.session()
    finally:
        try:
            sock.settimeout(old_timeout)
        except OSError:
            pass
