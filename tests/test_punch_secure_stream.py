"""The TCP driver: PAKE over a stream, then the encrypted record stream (punch.secure_stream)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from stunturn_diag.errors import AuthenticationError, PunchError
from stunturn_diag.sansio.punch.handshake import HELLO_LEN, PROOF_LEN
from stunturn_diag.punch.handshake_runner import authenticate_stream
from stunturn_diag.punch.secure_stream import SecureStream
from stunturn_diag.sansio.punch.wire import MAGIC, Kind, Role

KEY = "correct horse battery"
MATCH = "5f1e0c"
SECRET = b"the plaintext marker 0xC0FFEE that must never be on the wire"


def _pair_over(sock_i, sock_r, key_i=KEY, key_r=KEY):
    results = {}

    def side(name, sock, key, role):
        try:
            results[name] = authenticate_stream(sock, key, MATCH, role, time.monotonic() + 5)
        except PunchError as exc:
            results[name] = exc
            sock.close()

    threads = [threading.Thread(target=side, args=("i", sock_i, key_i, Role.INITIATOR)),
               threading.Thread(target=side, args=("r", sock_r, key_r, Role.RECEIVER))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


class Tap:
    """A loopback TCP man-in-the-middle: relays both ways, records and may alter bytes."""

    def __init__(self, alter=None):
        self.alter = alter or (lambda direction, data: data)
        self.seen = {"i->r": bytearray(), "r->i": bytearray()}
        srv = socket.create_server(("127.0.0.1", 0))
        self.address = srv.getsockname()
        self.side_i = socket.create_connection(self.address, timeout=5)
        self._to_i, _ = srv.accept()
        srv.close()
        a, self.side_r = socket.socketpair()
        self._to_r = a
        self._threads = [threading.Thread(target=self._pump, args=(self._to_i, self._to_r, "i->r"),
                                          daemon=True),
                         threading.Thread(target=self._pump, args=(self._to_r, self._to_i, "r->i"),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self, src, dst, direction):
        src.settimeout(10)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                self.seen[direction] += data
                dst.sendall(self.alter(direction, data))
        except OSError:
            return

    def close(self):
        for s in (self.side_i, self.side_r, self._to_i, self._to_r):
            s.close()
        for t in self._threads:
            t.join(5)


def test_same_key_gives_a_private_stream_both_ways():
    tap = Tap()
    try:
        res = _pair_over(tap.side_i, tap.side_r)
        si, sr = res["i"], res["r"]
        assert isinstance(si, SecureStream) and isinstance(sr, SecureStream)
        blob = SECRET * 2000 + os.urandom(50_000)
        t = threading.Thread(target=lambda: (si.sendall(blob), si.shutdown(socket.SHUT_WR)))
        t.start()
        got = bytearray()
        while chunk := sr.recv(65536):
            got += chunk
        t.join(10)
        assert bytes(got) == blob and not sr.truncated
        sr.sendall(b"pong " + SECRET)
        assert si.recv(65536) == b"pong " + SECRET
        wire = bytes(tap.seen["i->r"]) + bytes(tap.seen["r->i"])
        assert len(tap.seen["i->r"]) > len(blob)                    # it all went through the tap
        assert SECRET not in wire and SECRET[:12] not in wire       # (d): ciphertext only
        assert KEY.encode() not in wire
    finally:
        tap.close()


def test_a_tampered_record_is_detected_and_ends_the_stream():
    state = {"seen": 0}
    handshake = HELLO_LEN + PROOF_LEN           # what the initiator sends before records

    def alter(direction, data):
        if direction != "i->r":
            return data
        start, state["seen"] = state["seen"], state["seen"] + len(data)
        if state["seen"] > handshake:            # past HELLO and PROOF (the same read or not)
            data = bytearray(data)
            past = max(0, handshake - start)
            data[past + (len(data) - past) // 2] ^= 0x40
            return bytes(data)
        return data

    tap = Tap(alter)
    try:
        res = _pair_over(tap.side_i, tap.side_r)
        si, sr = res["i"], res["r"]
        time.sleep(0)  # noqa: the handshake is done once both returned
        si.sendall(b"x" * 1000)
        with pytest.raises(AuthenticationError) as err:
            while sr.recv(65536):
                pass
        assert err.value.reason == "record-failed"
    finally:
        tap.close()


def test_a_cut_connection_is_reported_as_truncated_not_as_a_clean_end():
    a, b = socket.socketpair()
    res = _pair_over(a, b)
    res["i"].sendall(b"partial")
    res["i"].sock.shutdown(socket.SHUT_WR)          # a TCP FIN without the FIN record
    assert res["r"].recv() == b"partial"
    assert res["r"].recv() == b"" and res["r"].truncated
    a.close(), b.close()


def test_different_keys_fail_on_both_sides():
    a, b = socket.socketpair()
    res = _pair_over(a, b, key_r="not the key")
    assert isinstance(res["i"], PunchError) and isinstance(res["r"], PunchError)
    assert any(isinstance(v, AuthenticationError) and v.reason == "auth-failed"
               for v in res.values())
    a.close(), b.close()


def test_a_version_1_peer_gets_a_clear_error():
    a, b = socket.socketpair()
    b.sendall(MAGIC + bytes([1, Kind.HELLO, 1, 0]) + os.urandom(32))   # a v1 HELLO
    with pytest.raises(AuthenticationError) as err:
        authenticate_stream(a, KEY, MATCH, "initiator", deadline=time.monotonic() + 5)
    assert err.value.reason == "version-mismatch"
    assert "peer speaks handshake v1" in str(err.value) and "upgrade both sides" in str(err.value)
    a.close(), b.close()


def test_authenticate_stream_times_out_on_silent_peer():
    a, b = socket.socketpair()
    now = [0.0]

    def clock():
        now[0] += 0.05
        return now[0]

    with pytest.raises(PunchError) as err:
        authenticate_stream(a, KEY, MATCH, "initiator", deadline=0.2, clock=clock)
    assert err.value.reason == "auth-timeout"
    a.close(), b.close()


def test_authenticate_stream_to_a_closed_peer_is_a_punch_error():
    a, b = socket.socketpair()
    b.close()                                        # sendall of our HELLO fails (EPIPE)
    with pytest.raises(PunchError) as err:
        authenticate_stream(a, KEY, MATCH, "initiator", deadline=time.monotonic() + 5)
    assert err.value.reason == "auth-connection-lost"
    a.close()


def test_makefile_reads_lines_of_the_decrypted_stream():
    a, b = socket.socketpair()
    res = _pair_over(a, b)
    res["i"].sendall(b"first line\nsecond ")
    res["i"].sendall(b"line\n")
    res["i"].shutdown(socket.SHUT_WR)
    reader = res["r"].makefile("rb")
    assert reader.readline() == b"first line\n" and reader.readline() == b"second line\n"
    assert reader.readline() == b""
    with pytest.raises(ValueError):
        res["r"].makefile("w")
    a.close(), b.close()
