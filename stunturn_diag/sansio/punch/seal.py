"""Sealing of every byte after the handshake (pure functions and state, no sockets).

Keys come from the PAKE handshake (:meth:`.handshake.Handshake.session`): one
ChaCha20-Poly1305 key per direction (RFC 8439, AEAD_CHACHA20_POLY1305), so the
96-bit nonce can simply be the 64-bit sequence number of the direction, left-padded
with zeros (the construction of RFC 8446 section 5.3 without the XOR mask: the
keys are fresh per handshake). The header is the associated data, so kind, role
and sequence number are authenticated too.

* **UDP frames** (:class:`Session`): ``header | seq (8) | AEAD(payload)``; one
  datagram each. The sequence number travels in clear; a sliding anti-replay window
  (RFC 4303 section 3.4.3) drops duplicates and frames older than the window, and
  every drop is counted by cause.
* **TCP records** (:class:`RecordSealer`, :class:`RecordReader`): a stream of
  ``kind (1) | length (2) | AEAD(payload)`` records, at most :data:`MAX_RECORD`
  plaintext bytes each (as TLS 1.3 records, RFC 8446 section 5). The sequence
  number is implicit (TCP delivers in order), so a replayed, dropped, reordered or
  modified record fails authentication; a stream cannot skip a record, so that
  ends the connection (:class:`~stunturn_diag.errors.AuthenticationError`).
  An authenticated FIN record marks the end of data, so a truncation by a forged
  TCP FIN/RST is told apart from a clean end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from stunturn_diag.errors import AuthenticationError
from stunturn_diag.sansio.punch.wire import FRAME_KINDS, HEADER, Counters, Kind, Role, header, is_handshake

KEY_LEN = 32
AEAD_TAG_LEN = 16
SEQ = struct.Struct("!Q")
FRAME_OVERHEAD = HEADER.size + SEQ.size + AEAD_TAG_LEN
REPLAY_WINDOW = 64
#: TCP: kind, ciphertext length
RECORD_HEADER = struct.Struct("!BH")
MAX_RECORD = 16384
RECORD_KINDS = (Kind.DATA, Kind.FIN)


def _nonce(seq: int) -> bytes:
    return b"\x00\x00\x00\x00" + SEQ.pack(seq)


@dataclass
class ReplayWindow:
    """Sliding anti-replay window over 64-bit sequence numbers (RFC 4303 section 3.4.3)."""

    size: int = REPLAY_WINDOW
    top: int = -1
    bitmap: int = 0

    def check(self, seq: int) -> bool:
        """Would ``seq`` be new? (No state change: check before, record after the tag verified.)"""
        if seq > self.top:
            return True
        offset = self.top - seq
        return offset < self.size and not self.bitmap & (1 << offset)

    def check_and_set(self, seq: int) -> bool:
        """True if ``seq`` is new (and records it); False for a duplicate or too old."""
        if not self.check(seq):
            return False
        if seq > self.top:
            shift = seq - self.top
            # a jump past the window leaves only seq: never shift by a peer-chosen 2**63
            kept = (self.bitmap << shift) & ((1 << self.size) - 1) if shift < self.size else 0
            self.bitmap = kept | 1
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)
        return True


@dataclass
class Session:
    """Seals and opens encrypted, authenticated UDP frames (DATA, KEEPALIVE, FIN, BYE)."""

    role: Role
    send_key: bytes
    recv_key: bytes
    next_seq: int = 0
    window: ReplayWindow = field(default_factory=ReplayWindow)
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self._send = ChaCha20Poly1305(self.send_key)
        self._recv = ChaCha20Poly1305(self.recv_key)

    def seal(self, kind: Kind, payload: bytes = b"") -> bytes:
        if kind not in FRAME_KINDS:
            raise ValueError(f"not a frame kind: {kind!r}")
        seq = self.next_seq
        self.next_seq += 1
        head = header(kind, self.role) + SEQ.pack(seq)
        return head + self._send.encrypt(_nonce(seq), bytes(payload), head)

    def open(self, data: bytes) -> tuple[Kind, bytes] | None:
        """(kind, payload) of an authentic, fresh frame; None (counted) otherwise."""
        if not is_handshake(data) or len(data) < FRAME_OVERHEAD or data[5] not in FRAME_KINDS:
            self.counters.malformed += 1
            return None
        if data[6] != self.role.other.byte:
            self.counters.wrong_role += 1
            return None
        cut = HEADER.size + SEQ.size
        (seq,) = SEQ.unpack_from(data, HEADER.size)
        if not self.window.check(seq):
            self.counters.replayed += 1
            return None
        try:
            payload = self._recv.decrypt(_nonce(seq), data[cut:], data[:cut])
        except InvalidTag:
            self.counters.bad_tag += 1
            return None
        self.window.check_and_set(seq)
        return Kind(data[5]), payload


def _record_error(why: str) -> AuthenticationError:
    return AuthenticationError(f"a TCP record from the peer did not authenticate ({why}): "
                               "the stream was modified, replayed or cut on the path",
                               hint="the connection is closed; punch again", reason="record-failed")


@dataclass
class RecordSealer:
    """Our direction of a TCP stream: plaintext -> records."""

    key: bytes
    seq: int = 0

    def __post_init__(self) -> None:
        self._aead = ChaCha20Poly1305(self.key)

    def seal(self, kind: Kind, payload: bytes = b"") -> bytes:
        """One record (``payload`` at most :data:`MAX_RECORD` bytes)."""
        if kind not in RECORD_KINDS or len(payload) > MAX_RECORD:
            raise ValueError(f"bad record: kind {kind!r}, {len(payload)} bytes")
        head = RECORD_HEADER.pack(kind, len(payload) + AEAD_TAG_LEN)
        body = self._aead.encrypt(_nonce(self.seq), bytes(payload), head)
        self.seq += 1
        return head + body

    def seal_data(self, data: bytes) -> bytes:
        """Any amount of data as consecutive DATA records."""
        view = memoryview(data)
        return b"".join(self.seal(Kind.DATA, bytes(view[i:i + MAX_RECORD]))
                        for i in range(0, len(view), MAX_RECORD))


@dataclass
class RecordReader:
    """The peer's direction of a TCP stream: bytes as they arrive -> (kind, payload) records.

    :meth:`feed` raises :class:`AuthenticationError` (reason ``record-failed``) on the
    first record that does not authenticate; the reader is then dead.
    """

    key: bytes
    seq: int = 0
    counters: Counters = field(default_factory=Counters)
    _buf: bytearray = field(default_factory=bytearray)
    _failed: bool = False

    def __post_init__(self) -> None:
        self._aead = ChaCha20Poly1305(self.key)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[Kind, bytes]]:
        if self._failed:
            raise _record_error("an earlier record failed")
        self._buf += data
        out: list[tuple[Kind, bytes]] = []
        while len(self._buf) >= RECORD_HEADER.size:
            kind, length = RECORD_HEADER.unpack_from(self._buf)
            if kind not in RECORD_KINDS or not AEAD_TAG_LEN <= length <= MAX_RECORD + AEAD_TAG_LEN:
                self._failed = True
                self.counters.malformed += 1
                raise _record_error(f"malformed header: kind {kind}, length {length}")
            end = RECORD_HEADER.size + length
            if len(self._buf) < end:
                break
            head = bytes(self._buf[:RECORD_HEADER.size])
            body = bytes(self._buf[RECORD_HEADER.size:end])
            try:
                payload = self._aead.decrypt(_nonce(self.seq), body, head)
            except InvalidTag:
                self._failed = True
                self.counters.bad_tag += 1
                raise _record_error(f"bad tag on record {self.seq}") from None
            del self._buf[:end]
            self.seq += 1
            out.append((Kind(kind), payload))
        return out
