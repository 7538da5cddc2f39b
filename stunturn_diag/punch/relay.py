"""Carry bytes between a punched connection and stdin/stdout or a local service.

Used by ``stunturn-diag punch`` after the handshake:

* :func:`relay_stdio` — netcat style: stdin to the peer, the peer to stdout;
* :func:`forward` — connect the channel to a local service (``--forward HOST:PORT``);
* :func:`listen` — accept one local client and carry it through (``--listen HOST:PORT``).

A TCP punch carries a byte stream (one local TCP client per punched connection);
a UDP punch carries datagrams (a local UDP service/client), one authenticated
datagram per local datagram. Both directions end with a half-close (TCP
``shutdown``, UDP FIN frame); the relay returns when both are done, when the peer
closes, or when it is lost.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from stunturn_diag.sansio import netaddr

from ..errors import ConfigError, PunchError
from .channel import MAX_PAYLOAD, STREAM_CHUNK, UdpChannel
from stunturn_diag.sansio.netaddr import Address


class _Peer:
    """Uniform read/write/half-close over a UdpChannel or a TCP socket."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.datagram = isinstance(conn, UdpChannel)
        self.chunk = STREAM_CHUNK if self.datagram else 65536
        #: local datagrams too large for one frame (dropped)
        self.oversized = 0

    def read(self) -> bytes:
        """The peer's next bytes; ``b""`` only at its end of data. A TCP connection that
        fails (a reset, keepalives unanswered) or ends without the peer's authenticated
        end of data (:attr:`SecureStream.truncated`) is a lost peer, never a quiet EOF:
        what arrived may be incomplete."""
        if self.datagram:
            return self.conn.recv()
        try:
            data = self.conn.recv(65536)
        except OSError as exc:
            raise PunchError(f"the TCP connection to the peer failed: {exc.strerror or exc}",
                             hint="the peer quit or the path was cut; what arrived before "
                                  "may be incomplete", reason="peer-lost") from None
        if not data and getattr(self.conn, "truncated", False):
            raise PunchError("the TCP connection to the peer ended without the peer's "
                             "authenticated end of data (closed or reset on the way)",
                             hint="what arrived may be incomplete; run it again",
                             reason="peer-lost")
        return data

    def write(self, data: bytes) -> None:
        """Bytes of a stream: over UDP in frames that need no IP fragmentation."""
        if self.datagram:
            for i in range(0, len(data), STREAM_CHUNK):
                self.conn.send(data[i:i + STREAM_CHUNK])
        else:
            self.conn.sendall(data)

    def write_datagram(self, data: bytes) -> None:
        """One local datagram as one frame (boundaries kept); too large: dropped, counted."""
        if len(data) > MAX_PAYLOAD:
            self.oversized += 1
            return
        self.conn.send(data)

    def close_write(self) -> None:
        try:
            if self.datagram:
                self.conn.shutdown_write()
            else:
                self.conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def parse_hostport(text: str, option: str) -> Address:
    """``HOST:PORT`` / ``[v6]:PORT`` -> (host, port); ConfigError otherwise."""
    try:
        return netaddr.parse_hostport(text)
    except ValueError as exc:
        raise ConfigError(f"{option} wants HOST:PORT, got {text!r} ({exc})",
                          hint=f"for example {option} 127.0.0.1:22 or [::1]:22") from None


def parse_bind(text: str) -> Address:
    """``IP`` / ``IP:PORT`` / ``[v6]:PORT`` / bare IPv6 -> (ip, port); ConfigError otherwise."""
    host, port = text, "0"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        port = port[1:] if port.startswith(":") else ("0" if not port else "x")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        ip = None
    if ip is None or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--bind wants IP or IP:PORT, got {text!r}",
                          hint="for example --bind 0.0.0.0:40000 or --bind [::]:40000")
    return ip, int(port)


def _pump(read, write, close_write, errors: list) -> None:
    try:
        while True:
            data = read()
            if not data:
                break
            write(data)
    except (OSError, PunchError) as exc:
        errors.append(exc)
    finally:
        close_write()


def relay_stdio(conn, *, stdin_fd: int | None = None, stdout=None) -> None:
    """stdin -> peer and peer -> stdout until the peer's data ends."""
    peer = _Peer(conn)
    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    out = stdout or sys.stdout.buffer
    errors: list = []

    def write_out(data: bytes) -> None:
        out.write(data)
        out.flush()

    sender = threading.Thread(target=_pump, daemon=True, name="stunturn-stdin",
                              args=(lambda: os.read(fd, peer.chunk), peer.write,
                                    peer.close_write, errors))
    sender.start()
    _pump(peer.read, write_out, lambda: None, errors)
    sender.join(1.0 if not errors else 0.1)
    _raise_lost(errors)


def _raise_lost(errors: list) -> None:
    for exc in errors:
        if isinstance(exc, PunchError):
            raise exc


def _bridge(peer: _Peer, local: socket.socket, datagram_local: bool,
            reply_to: list | None = None) -> None:
    """Both directions between the punched peer and a local socket."""
    errors: list = []

    def local_read() -> bytes:
        while True:
            try:
                if reply_to is not None:
                    data, src = local.recvfrom(65535)
                    reply_to[:] = [src]
                else:
                    data = local.recv(65535)
            except ConnectionRefusedError:
                if datagram_local:
                    continue   # ICMP port unreachable from a local UDP service: it may come back
                return b""
            except OSError:
                return b""
            if data or not datagram_local:
                return data    # an empty datagram is not the end of the data

    def local_write(data: bytes) -> None:
        if reply_to is not None:
            if reply_to:
                local.sendto(data, reply_to[0])
        else:
            local.sendall(data) if not datagram_local else local.send(data)

    def local_close_write() -> None:
        if datagram_local:
            return
        try:
            local.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    to_peer = peer.write_datagram if datagram_local and peer.datagram else peer.write
    up = threading.Thread(target=_pump, daemon=True, name="stunturn-local-up",
                          args=(local_read, to_peer, peer.close_write, errors))
    up.start()
    _pump(peer.read, local_write, local_close_write, errors)
    if not datagram_local:
        up.join(5.0)
    local.close()
    _raise_lost(errors)


def _unreachable_service(target: Address, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot connect to the local service {target[0]}:{target[1]}: "
                       f"{exc.strerror or exc}", hint="is it running?")


def forward(conn, target: Address) -> None:
    """Connect the punched channel to the local service at ``target``."""
    peer = _Peer(conn)
    if peer.datagram:
        local = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET,
                              socket.SOCK_DGRAM)
        try:
            local.connect(target)
        except OSError as exc:       # an unresolvable name or an unusable address
            local.close()
            raise _unreachable_service(target, exc) from None
        _bridge(peer, local, True)
        return
    try:
        local = socket.create_connection(target, timeout=10)
    except OSError as exc:
        raise _unreachable_service(target, exc) from None
    local.settimeout(None)
    _bridge(peer, local, False)


def listen(conn, bind: Address, *, ready=None, accept_timeout: float | None = None) -> None:
    """Accept one local client on ``bind`` and carry it through the punched channel.

    ``ready(address)`` is called once the local socket listens.
    """
    peer = _Peer(conn)
    family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
    kind = socket.SOCK_DGRAM if peer.datagram else socket.SOCK_STREAM
    srv = socket.socket(family, kind)
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(bind)
        if not peer.datagram:
            srv.listen(1)
    except OSError as exc:
        srv.close()
        raise ConfigError(f"cannot listen on {bind[0]}:{bind[1]}: {exc.strerror or exc}",
                          hint="pick a free local port") from None
    if ready:
        ready(srv.getsockname()[:2])
    if peer.datagram:
        _bridge(peer, srv, True, reply_to=[])
        return
    srv.settimeout(accept_timeout)
    try:
        client, _ = srv.accept()
    except socket.timeout:
        srv.close()
        raise ConfigError(f"no local client connected to {bind[0]}:{bind[1]} in time") from None
    srv.close()
    client.settimeout(None)
    _bridge(peer, client, False)
