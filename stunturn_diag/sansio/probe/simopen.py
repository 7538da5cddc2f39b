"""When a TCP simultaneous-open round (RFC 5382 section 4.2, REQ-2) counts. Pure: the
rounds themselves run in :mod:`stunturn_diag.probe.simopen_runner`.

A round: we ask the server (``/v1/probe/tcp-simopen``) for a source port; it answers at
once and ``delay_ms`` after taking the request connects from that port to our mapped
port; on the answer we send our SYN toward that port, dying one hop past our NAT or
firewall. The server's SYN crosses our NAT only if our SYN went out first: a SYN that
arrives before ours meets no state and is dropped or refused, and the server's kernel
would send it again only after its 1 s retransmission timeout (RFC 6298 section 2), past
the round's wait. So a SYN that never arrived says "no simultaneous open" only when ours
left less than ``delay_ms`` after we asked (``syn_sent_ms``): the server cannot have
taken the request before we asked, so its SYN left after ours. A round that lost that
race (a loaded host: the answer's reading, the other probe threads) proves nothing and is
run again with a longer delay; one that won stands (once more if packets were lost).
"""

from __future__ import annotations

import math

#: the server's ``delay_ms`` limit (server/sansio/validation.py MAX_DELAY_MS)
MAX_DELAY_MS = 1000
#: rounds at most (one per lost race, one more after packet loss)
MAX_ROUNDS = 3


def first_delay_ms(rtt: float) -> int:
    """The first round's ``delay_ms``: 4 round trips (``rtt`` in seconds), 30..1000 ms."""
    return int(min(MAX_DELAY_MS, max(30, 4 * rtt * 1000)))


def wait_ms(rtt: float) -> int:
    """How long the server's connect and our watch wait beyond ``delay_ms``: 10 round
    trips, 250..3000 ms."""
    return int(min(3000, max(250, 10 * rtt * 1000)))


def lost_race(info: dict) -> bool:
    """The round's SYN left no earlier than the server's could (``syn_sent_ms`` >=
    ``delay_ms``) and the server's SYN did not arrive: the round proves nothing."""
    return info.get("connected") is False and info["syn_sent_ms"] >= info["delay_ms"]


def next_delay_ms(info: dict, rounds: int, loss: bool, misses: int) -> int | None:
    """The next round's ``delay_ms`` after round number ``rounds`` (``info``: its evidence),
    None when its verdict stands. ``loss``: the path was seen losing packets; ``misses``:
    rounds so far whose SYN won the race and still saw no server SYN."""
    if info.get("connected") is not False or rounds >= MAX_ROUNDS:
        return None
    delay = info["delay_ms"]
    if lost_race(info):   # twice what it took us, so a similar stall still leaves margin
        return min(MAX_DELAY_MS, max(2 * delay, math.ceil(2 * info["syn_sent_ms"])))
    if loss and misses == 1:
        return delay
    return None


def race_error(info: dict) -> str | None:
    """Why the last round cannot be a verdict (it too lost the race), else None."""
    if not lost_race(info):
        return None
    return (f"our SYN left {info['syn_sent_ms']:g} ms after asking the server, not before its SYN "
            f"(due {info['delay_ms']} ms after the request) in any of {info.get('rounds', 1)} rounds: "
            "this host was too slow to tell")
