"""A TCP punch's relay: a reset or a cut stream is a lost peer, never a quiet end (punch.relay)."""

from __future__ import annotations

import io
import os
import socket
import struct
import threading
import time

import pytest

from stunturn_diag.errors import PunchError
from stunturn_diag.punch.handshake_runner import authenticate_stream
from stunturn_diag.punch.relay import relay_stdio
from stunturn_diag.sansio.punch.wire import Role

KEY, MATCH = "correct horse battery", "5f1e0c"


def _secure_pair():
    """Two authenticated SecureStreams over a real loopback TCP connection."""
    lsock = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lsock.getsockname())
    b, _ = lsock.accept()
    lsock.close()
    out = {}
    t = threading.Thread(target=lambda: out.update(
        i=authenticate_stream(a, KEY, MATCH, Role.INITIATOR, time.monotonic() + 5)))
    t.start()
    r = authenticate_stream(b, KEY, MATCH, Role.RECEIVER, time.monotonic() + 5)
    t.join(10)
    return out["i"], r


def _relay(stream):
    """relay_stdio with an empty stdin that never ends (a pipe we keep open)."""
    rfd, wfd = os.pipe()
    out = io.BytesIO()
    try:
        relay_stdio(stream, stdin_fd=rfd, stdout=out)
        return out.getvalue()
    finally:
        os.close(wfd)
        os.close(rfd)


def test_the_peers_authenticated_end_of_data_ends_the_relay_cleanly():
    i, r = _secure_pair()
    i.sendall(b"whole")
    i.shutdown(socket.SHUT_WR)                    # the FIN record
    assert _relay(r) == b"whole"
    i.close(), r.close()


def test_a_stream_cut_without_the_fin_record_is_a_lost_peer():
    i, r = _secure_pair()
    i.sendall(b"partial")
    i.sock.shutdown(socket.SHUT_WR)               # a TCP FIN, no FIN record
    with pytest.raises(PunchError) as err:
        _relay(r)
    assert err.value.reason == "peer-lost" and "end of data" in err.value.message
    i.close(), r.close()


def test_a_reset_connection_is_a_lost_peer_not_an_empty_success():
    i, r = _secure_pair()
    i.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    i.sock.close()                                # an RST
    with pytest.raises(PunchError) as err:
        _relay(r)
    assert err.value.reason == "peer-lost" and "failed" in err.value.message, err.value.message
    r.close()
