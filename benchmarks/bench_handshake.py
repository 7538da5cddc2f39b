"""Cost of the punch handshake v3 (CPace on X25519 + key confirmation) and of the key derivations.

Prints one JSON line: per-operation medians in milliseconds over ``--rounds`` runs
(pure code, no sockets): a full handshake of both sides, one side's share of it, the
CPace generator, the rendezvous scrypt, and sealing/opening a 1200-byte UDP frame.
"""

from __future__ import annotations

import os
import argparse
import json
import statistics
import time

from stunturn_diag.sansio.punch import handshake, cpace
from stunturn_diag.sansio.punch.handshake import Handshake, Role
from stunturn_diag.sansio.punch.keys import _scrypt
from stunturn_diag.sansio.punch.wire import Kind

KEY = "bench-key-J8x#kq2Lm9pZ4vR7"


def _full_handshake() -> tuple[float, float]:
    t0 = time.perf_counter()
    i = Handshake(KEY, "bench-match", Role.INITIATOR, entropy=os.urandom)
    t1 = time.perf_counter()
    r = Handshake(KEY, "bench-match", Role.RECEIVER, entropy=os.urandom)
    proof_r = r.handle(i.hello()).reply
    proof_i = i.handle(proof_r).reply
    r.handle(proof_i)
    t2 = time.perf_counter()
    assert i.complete and r.complete
    return (t2 - t0) * 1000, (t1 - t0) * 1000


def _median_ms(fn, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(samples), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    full = [_full_handshake() for _ in range(args.rounds)]
    i, r = Handshake(KEY, "m", Role.INITIATOR, entropy=os.urandom), Handshake(KEY, "m", Role.RECEIVER, entropy=os.urandom)
    r.handle(i.handle(r.handle(i.hello()).reply).reply)
    si, sr = i.session(), r.session()
    payload = bytes(1200)
    print(json.dumps({
        "handshake_both_sides_ms": round(statistics.median(f[0] for f in full), 3),
        "handshake_start_one_side_ms": round(statistics.median(f[1] for f in full), 3),
        "generator_elligator2_ms": _median_ms(
            lambda: cpace.calculate_generator(handshake.pake_password(KEY), handshake.CHANNEL_ID,
                                              handshake.session_id("bench-match")), args.rounds),
        "rendezvous_scrypt_ms": _median_ms(lambda: _scrypt.__wrapped__(b"bench key"),
                                           max(3, args.rounds // 10)),
        "seal_open_1200B_frame_ms": _median_ms(lambda: sr.open(si.seal(Kind.DATA, payload)),
                                               args.rounds * 20),
        "rounds": args.rounds,
    }))


if __name__ == "__main__":
    main()
