"""Codec interop with classic RFC 3489 clients: stun-client (`stun`) and pystun3.

A tiny loopback responder built on the codec decodes their cookie-less
requests (16-byte transaction id, CHANGE-REQUEST) and answers with classic
MAPPED-ADDRESS / SOURCE-ADDRESS / CHANGED-ADDRESS, which the clients must parse.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from stunturn_diag.errors import StunDecodeError
from stunturn_diag.sansio.stun import (
    AttrType,
    ChangeRequest,
    MessageClass,
    Method,
    StunMessage,
    decode,
    encode,
)

pytestmark = pytest.mark.interop


class MiniResponder:
    """Answers Binding requests without CHANGE flags; records every decoded request.

    Runs at most ``max_seconds`` and ``max_messages``; it has one address only,
    so requests asking for a change are recorded but not answered.
    """

    def __init__(self, max_seconds: float = 30.0, max_messages: int = 200) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.requests: list[StunMessage] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._max = max_messages
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        received = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline and received < self._max:
            try:
                data, source = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            received += 1
            try:
                request = decode(data)
            except StunDecodeError as exc:
                self.errors.append(str(exc))
                continue
            self.requests.append(request)
            if request.change_request != ChangeRequest(False, False):
                continue
            reply = StunMessage(Method.BINDING, MessageClass.SUCCESS, request.transaction_id, [
                (AttrType.MAPPED_ADDRESS, source),
                (AttrType.SOURCE_ADDRESS, self.address),
                (AttrType.CHANGED_ADDRESS, self.address),
            ])
            if not request.classic:
                reply.add(AttrType.XOR_MAPPED_ADDRESS, source)
            self.sock.sendto(encode(reply), source)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[MiniResponder]:
    server = MiniResponder()
    try:
        yield server
    finally:
        server.close()


def test_stun_client_classic_requests_and_our_classic_answers(responder: MiniResponder) -> None:
    if shutil.which("stun") is None:
        pytest.skip("stun-client (`stun`) is not installed")
    host, port = responder.address
    result = subprocess.run(["stun", f"{host}:{port}", "-v"], capture_output=True, text=True,
                            timeout=60)
    output = result.stdout + result.stderr
    assert responder.errors == []
    assert responder.requests, output
    assert all(r.classic and len(r.transaction_id) == 16 for r in responder.requests)
    assert all(r.method == Method.BINDING and r.msg_class == MessageClass.REQUEST
               for r in responder.requests)
    # the client logs each CHANGE-REQUEST value it encodes; we must decode the same flags
    printed = {int(v) for v in re.findall(r"Encoding ChangeRequest: (\d+)", output)}
    decoded = {4 * r.change_request.change_ip + 2 * r.change_request.change_port
               for r in responder.requests if r.get(AttrType.CHANGE_REQUEST) is not None}
    assert printed and printed == decoded
    # it parsed our MAPPED-ADDRESS: test I succeeded and saw its own address (no NAT)
    assert "test I = 1" in output and "mapped IP same = 1" in output, output


def test_pystun3_parses_our_classic_answer(responder: MiniResponder) -> None:
    pystun = pytest.importorskip("stun")
    if not hasattr(pystun, "stun_test"):
        pytest.skip("the installed 'stun' module is not pystun3")
    pystun._initialize()  # what pystun3's get_ip_info() does before stun_test()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        host, port = responder.address
        result = pystun.stun_test(sock, host, port, "127.0.0.1", sock.getsockname()[1])
        client = sock.getsockname()
    assert result["Resp"] is True
    assert (result["ExternalIP"], result["ExternalPort"]) == client
    assert (result["SourceIP"], result["SourcePort"]) == responder.address
    assert (result["ChangedIP"], result["ChangedPort"]) == responder.address
    assert responder.requests and responder.requests[0].classic
