"""Security: online key guessing and match hijack against a real server on loopback (issue 10, 2).

Each test runs the attack, asserts it now fails, and that a legitimate pairing still works
during it. Attacks are bounded in count and time; sources are 127.0.0.x (loopback owns 127/8).
"""

from __future__ import annotations

import pytest

from securitylib import call, rv
from stunturn_server.config import ServerConfig
from stunturn_server.runner import start_server
from testlib import in_background, wait_for

KEY = "correct horse battery"
RECEIVER = "127.0.0.2"
INITIATOR = "127.0.0.1"
ATTACKER = "127.0.0.66"


@pytest.fixture
def server():
    config = ServerConfig(http_port=0, stun_enabled=False, wait_timeout=20, failure_burst=5,
                          failure_rate=2.0, target_failure_burst=40, target_failure_rate=5.0)
    with start_server(config) as handle:
        yield handle


def initiate(server, key, *, source=INITIATOR, target=RECEIVER, timeout=None):
    body = {"rendezvous": rv(key), "target_ip": target, "protocol": "udp"}
    if timeout is not None:
        body["timeout"] = timeout
    return call(server.http_address, "POST", "/v1/initiate", body, source=source)


def checkin(server, key, *, source=RECEIVER):
    return call(server.http_address, "POST", "/v1/checkin", {"rendezvous": rv(key)}, source=source)


def waiting(server) -> int:
    return call(server.http_address, "GET", "/healthz")[2]["waiting"]


def test_initiate_is_no_oracle_and_guessing_is_rate_limited(server):
    """The review's attack: from an unrelated IP, guess keys with /v1/initiate and watch for 409."""
    legit, result = in_background(initiate, server, KEY)
    wait_for(lambda: waiting(server) == 1, what="the legitimate initiator")
    answers = []
    for guess in ["password1", "letmein99", KEY, "qwertyuiop", "dragon123", "monkey1234", "sunshine1"]:
        status, headers, body = initiate(server, guess, source=ATTACKER, timeout=0.05)
        answers.append((guess, status, body["error"]))
    by_guess = {g: (s, e) for g, s, e in answers}
    # the right key (3rd guess) answers exactly like the wrong ones: no 409 to another source
    assert by_guess[KEY] == by_guess["password1"] == (408, "timeout"), answers
    assert all(status != 409 for _, status, _ in answers)
    # after failure_burst (5) failed attempts the source is limited, whatever it guesses
    assert [s for _, s, _ in answers[5:]] == [429, 429], answers
    status, headers, body = initiate(server, "another-guess", source=ATTACKER, timeout=0.05)
    assert status == 429 and body["error"] == "rate-limited" and int(headers["Retry-After"]) >= 1
    # nor is /healthz: an attacker's initiate counts as waiting whether or not someone else waits
    right, _ = in_background(initiate, server, KEY, source="127.0.0.67", timeout=3)
    wrong, _ = in_background(initiate, server, "never-the-key", source="127.0.0.68", timeout=3)
    wait_for(lambda: waiting(server) == 3, what="both attacker initiates counted alike")
    right.join(10)
    wrong.join(10)
    # meanwhile the real pair still meets
    assert checkin(server, KEY)[0] == 200
    legit.join(20)
    assert result["value"][0] == 200


def test_checkin_guessing_from_the_receivers_ip_cannot_take_the_match(server):
    """CGNAT: the attacker shares the receiver's public IP and guesses keys by checking in."""
    legit, result = in_background(initiate, server, KEY)
    wait_for(lambda: waiting(server) == 1, what="the legitimate initiator")
    statuses = [checkin(server, f"guess-{i:04d}-x")[0] for i in range(30)]  # bounded: 30 guesses
    assert statuses[:5] == [404] * 5 and set(statuses[5:]) == {429}, statuses
    assert waiting(server) == 1  # nothing was taken
    # the right key is refused too while the shared address is limited: the guesser gains nothing
    status, headers, body = checkin(server, KEY)
    assert status == 429 and body["retry_after"] >= 1
    # once the Retry-After has passed the legitimate receiver pairs
    wait_for(lambda: checkin(server, KEY)[0] == 200, timeout=15, what="the receiver after Retry-After")
    legit.join(20)
    assert result["value"][0] == 200


def test_failures_are_limited_per_target_across_sources():
    """Many sources guessing for one target: its target bucket (20) runs out, then every source
    naming it is limited, while pairing for other targets is untouched."""
    config = ServerConfig(http_port=0, stun_enabled=False, failure_burst=5, failure_rate=0.01,
                          target_failure_burst=20, target_failure_rate=0.01)
    with start_server(config) as server:
        statuses = [initiate(server, f"guess-number-{i}", source=f"127.0.1.{i // 5 + 1}",
                             timeout=0.02)[0]
                    for i in range(30)]  # bounded: 30 attempts from 6 sources, 5 each (their burst)
        assert statuses[:20] == [408] * 20 and set(statuses[20:]) == {429}, statuses
        status, _, body = initiate(server, "fresh-guess", source="127.0.2.1", timeout=0.02)
        assert status == 429 and body["error"] == "rate-limited"
        other, result = in_background(initiate, server, KEY, target="127.0.0.3")
        wait_for(lambda: waiting(server) == 1, what="an initiator for another target")
        assert checkin(server, KEY, source="127.0.0.3")[0] == 200
        other.join(20)
        assert result["value"][0] == 200


def test_global_waiter_cap():
    config = ServerConfig(http_port=0, stun_enabled=False, max_waiters=2, max_waiters_per_ip=2)
    with start_server(config) as server:
        held = [in_background(initiate, server, f"key-number-{i}", source=f"127.0.3.{i + 1}",
                              timeout=5) for i in range(2)]
        wait_for(lambda: waiting(server) == 2, what="two waiters")
        status, headers, body = initiate(server, "one-too-many", source="127.0.3.9", timeout=1)
        assert status == 429 and body["error"] == "too-many-waiters" and body["limit"] == 2
        assert checkin(server, "key-number-0", source=RECEIVER)[0] == 200
        for thread, _ in held:
            thread.join(20)


def test_failed_guesses_are_logged_once_per_source_with_a_count(server, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="stunturn_server")
    for i in range(5):
        checkin(server, f"guess-{i:04d}-y", source="127.0.0.77")
    lines = [r.getMessage() for r in caplog.records if "no-initiator" in r.getMessage()]
    assert len(lines) == 1, lines  # not one (or two) per guess
    assert rv("guess-0000-y") not in caplog.text


def test_client_sees_rate_limited_with_retry_after(server):
    from stunturn_diag.errors import RateLimited
    from stunturn_diag.signaling import SignalingClient

    client = SignalingClient(server.http_url)
    for i in range(5):
        try:
            client.checkin(rv(f"wrong-key-{i:03d}"))
        except Exception as exc:  # 404 no-initiator until the burst is spent
            assert type(exc).__name__ == "NoInitiatorWaiting"
    with pytest.raises(RateLimited) as caught:
        client.checkin(rv("wrong-key-999"))
    assert caught.value.retry_after >= 1 and caught.value.status == 429
