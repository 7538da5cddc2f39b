"""The relayed path of a TCP punch: two RFC 6062 TCP allocations on the offered TURN
relay, joined by the relay into one TCP stream, with the same authenticated,
encrypted channel (CPace handshake + :class:`~.secure_stream.SecureStream`) as a
direct TCP punch.

As for UDP (:mod:`.relay_path`), no new pairing round: right after the match each side
opens a control connection to the relay (:class:`~stunturn_diag.turn.tcp_runner.TcpTurnSession`),
allocates (REQUESTED-TRANSPORT TCP), permits its own relayed IP (where the peer's
allocation lives: so the permission is in place before the peer can read our address),
posts its relayed address to ``POST /v1/relay`` with ``"transport": "tcp"`` and reads
the peer's (then permits that IP too when it differs). On fallback the initiator
sends Connect to the peer's relayed address and binds the data connection
(ConnectionBind), the receiver takes the relay's ConnectionAttempt and binds its own;
the relay then joins the two data connections, which become a plain byte stream
between the peers, and the handshake runs over it unchanged.

While the channel is open the control connection refreshes the allocation and the
permission; the data connection has the direct path's TCP keepalive and user timeout.
A relay that disappears resets or ends the stream (the control connection's end shuts
the data connection down), and silence is caught by the keepalive: a lost peer, never
a hang. Closing the stream deletes the allocation (Refresh 0) and closes the control
connection.
"""

from __future__ import annotations

import os
import select
import socket
import time

from ..errors import PunchError
from ..sansio.punch.handshake import Handshake, start_pake
from ..sansio.punch.wire import Kind, Role
from ..sansio.turn import client as turn
from ..turn.tcp_runner import TcpTurnSession
from .handshake_runner import authenticate_stream
from .relay_path import LIFETIME, RelayPath
from .secure_stream import SecureStream
from .tcp_sockets import configure_keepalive


#: close(): how long to wait for the peer's close once our FIN record went out
LINGER = 2.0


class RelayedStream(SecureStream):
    """A :class:`SecureStream` over a relay's data connection; closing it frees the
    allocation (Refresh 0) and closes the control connection too.

    coturn's RFC 6062 relay has no TCP half-close: a FIN on one data connection closes
    both, and the bytes it still buffers toward the other side are dropped (seen with
    coturn 4.6: a 1 MB send followed by ``shutdown(SHUT_WR)`` arrived as 776 KiB and a
    reset). So ``shutdown(SHUT_WR)`` sends only the authenticated FIN record (the peer's
    ``recv`` returns ``b""`` as on a direct path) and keeps the TCP connection open;
    ``close`` after our FIN record waits up to :data:`LINGER` seconds for the peer to
    close first (its FIN record tells it our data is all there), so neither side's last
    bytes are cut off in the relay.
    """

    def __init__(self, sock, send_key: bytes, recv_key: bytes, session: TcpTurnSession,
                 local: tuple[str, int], peer: tuple[str, int]) -> None:
        super().__init__(sock, send_key, recv_key)
        #: our relayed address and the peer's (the socket's own ends are ours and the relay's)
        self.session, self.local_address, self.peer_address = session, local, peer

    def shutdown(self, how: int) -> None:
        if how == socket.SHUT_RD:
            return
        with self._send_lock:
            if not self._fin_sent:
                self._fin_sent = True
                self.sock.sendall(self._sealer.seal(Kind.FIN))

    def _linger(self) -> None:
        """After our FIN record: until the peer closes (EOF or reset), at most LINGER s."""
        deadline = time.monotonic() + LINGER
        for _ in range(256):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                readable, _, _ = select.select([self.sock], [], [], left)
                if readable and not self.sock.recv(65536):
                    return
            except (OSError, ValueError):
                return

    def close(self) -> None:
        try:
            if self._fin_sent and self.sock.fileno() != -1:
                self._linger()
            super().close()
        finally:
            self.session.close()


class TcpRelayPath(RelayPath):
    """One side's TCP relay: allocate, permit, exchange, then Connect or accept."""

    protocol = "tcp"
    control = "tcp"

    @classmethod
    def offered(cls, signaling, match: dict, role: Role | str, **kw) -> "TcpRelayPath | None":
        """This match's relay when it relays TCP (its offer lists tcp), else None."""
        offer = match.get("turn")
        if not isinstance(offer, dict) or "tcp" not in (offer.get("transports") or []):
            return None
        return super().offered(signaling, match, role, **kw)

    def _allocate(self, until: float) -> bool:
        self.session = TcpTurnSession(self.server, self.offer["username"], self.offer["password"],
                                      connect_timeout=max(0.1, until - time.monotonic()))
        got = self.session.allocate(lifetime=LIFETIME, timeout=max(0.1, until - time.monotonic()))
        if not isinstance(got, turn.Allocated):
            self._refused(got)
            return False
        self.relayed = got.relayed
        return self._permit(self.relayed[0], until)

    def _permit(self, ip: str, until: float) -> bool:
        got = self.session.create_permission(ip, timeout=max(0.1, until - time.monotonic()))
        if not isinstance(got, turn.PermissionsCreated):
            self._fail(f"the relay did not install a permission for {ip} ({got})")
            return False
        return True

    def _bind_peer(self, until: float) -> bool:
        """Our own relayed IP is permitted already; the peer's, where it differs."""
        return self.peer[0] == self.relayed[0] or self._permit(self.peer[0], until)

    def _expected_source(self):
        """Where the peer's connection comes from: on the same relay as ours, the relay
        connects from the peer's relayed address itself (so only that is accepted);
        through another relay address, any port of its IP."""
        return self.peer if self.peer[0] == self.relayed[0] else self.peer[0]

    def _free(self, session) -> None:
        session.close()

    def connect(self, key: str, deadline: float, *, keepalive_interval: float = 2.0,
                peer_timeout: float = 10.0) -> RelayedStream:
        """The authenticated stream through the relay, or PunchError by ``deadline``."""
        self._take(deadline)
        session = self.session
        try:
            left = max(0.05, deadline - time.monotonic())
            if Role(self.role) is Role.INITIATOR:
                data, why = session.connect_stream(self.peer, left)
            else:
                data, why = session.accept_stream(self._expected_source(), left)
            if data is None:
                raise PunchError(f"the TURN relay did not join the TCP stream to the peer's "
                                 f"relayed address {self.peer[0]}:{self.peer[1]}: {why}",
                                 reason="relay-failed")
            try:
                configure_keepalive(data, keepalive_interval, peer_timeout)
                session.keep_alive(data, self.peer[0])
                hs = Handshake(key, self.match_id, self.role,
                               started=self.pake or start_pake(key, self.role, entropy=os.urandom))
                authenticate_stream(data, key, self.match_id, self.role, deadline, handshake=hs)
            except BaseException:
                data.close()
                raise
        except BaseException:
            session.close()
            raise
        # nothing was read past the handshake: the same stream, closing the relay with it
        return RelayedStream(data, *hs.traffic_keys(), session, self.relayed, self.peer)
