"""Pure classifier: transaction outcomes -> RFC 4787 / RFC 5780 verdicts.

Every verdict carries a value (a :mod:`stunturn_diag.behaviour` enum, a bool, or
None when undetermined) and its evidence: the reason in words and the probes it
rests on. A missing reply is evidence (filtering), never an exception.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stunturn_diag.behaviour import Filtering, Mapping, PortAllocation
from stunturn_diag.sansio.netaddr import Address, format_hostport
from stunturn_diag.sansio.probe.endpoints import Endpoints
from stunturn_diag.sansio.probe.engine import Outcome
from stunturn_diag.sansio.probe.names import Kind, life_y


@dataclass
class Verdict:
    """One behaviour's value and why."""

    value: Any
    reason: str
    probes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    #: False when the question does not arise (e.g. hairpinning without a NAT)
    applicable: bool = True
    #: True when the test should have run but broke (a helper failed): null, and "partial"
    failed: bool = False

    def evidence(self) -> dict:
        d = {"reason": self.reason, "probes": list(self.probes)}
        if not self.applicable:
            d["applicable"] = False
        if self.failed:
            d["failed"] = True
        d.update(self.extra)
        return d


def _fmt(a: Address | None) -> str:
    return "?" if a is None else format_hostport(*a)


def mapped(out: Outcome | None) -> Address | None:
    """XOR-MAPPED-ADDRESS of an answered transaction."""
    if out is None or not out.answered or out.message is None:
        return None
    return getattr(out.message, "mapped_address", None)


def _error(out: Outcome | None):
    if out is None or not out.answered or out.message is None:
        return None
    return getattr(out.message, "error", None)


#: the mapping probes and the server endpoint each one is sent to, in words
_MAP_TARGET = {Kind.MAP_PRIMARY: "primary", Kind.MAP_ALT_IP: "alt_ip", Kind.MAP_ALT_BOTH: "alt_both",
               Kind.MAP_ALT_PORT: "alt_port"}


def classify_mapping(o: dict[str, Outcome], local: Address) -> Verdict:
    """RFC 5780 section 4.3: compare the mapped addresses toward the four endpoints."""
    x1 = mapped(o.get(Kind.MAP_PRIMARY))
    if x1 is None:
        return Verdict(None, "no answer from the STUN server's primary address", [Kind.MAP_PRIMARY])
    if x1 == local:
        return Verdict(Mapping.NO_NAT, f"mapped address {_fmt(x1)} equals the local address",
                       [Kind.MAP_PRIMARY])
    x2, x3, x4 = (mapped(o.get(n)) for n in (Kind.MAP_ALT_IP, Kind.MAP_ALT_BOTH, Kind.MAP_ALT_PORT))
    seen = {n: mapped(o.get(n)) for n in _MAP_TARGET if mapped(o.get(n)) is not None}
    probes = list(seen)
    detail = ", ".join(f"{_MAP_TARGET[n]} -> {_fmt(a)}" for n, a in seen.items())
    if x4 is not None and x4 != x1:
        return Verdict(Mapping.ADDRESS_AND_PORT_DEPENDENT,
                       f"a new server port alone got a new mapping ({detail})", probes)
    if x2 is not None:
        if x2 == x1 and (x3 is None or x3 == x1):
            return Verdict(Mapping.ENDPOINT_INDEPENDENT, f"same mapping for every server address ({detail})",
                           probes)
        if x3 is not None:
            if x3 == x2:
                return Verdict(Mapping.ADDRESS_DEPENDENT,
                               f"new mapping per server IP, reused across its ports ({detail})", probes)
            return Verdict(Mapping.ADDRESS_AND_PORT_DEPENDENT,
                           f"new mapping per server IP and port ({detail})", probes)
        if x2 != x1:
            return Verdict(None, f"mapping changed with the server IP but the alternate IP+port did not "
                                 f"answer, so address vs address-and-port dependence is open ({detail})",
                           probes)
    if x3 is not None:
        if x3 == x1:
            return Verdict(Mapping.ENDPOINT_INDEPENDENT, f"same mapping toward the alternate IP+port "
                                                         f"({detail})", probes)
        return Verdict(None, f"mapping differs toward the alternate IP+port but the alternate IP alone did "
                             f"not answer ({detail})", probes)
    return Verdict(None, "no alternate server address answered: only the mapped address is known "
                         f"({detail})", probes)


def _from_changed(out: Outcome, primary: Address, change_ip: bool) -> bool:
    """The answer really came from the other address the CHANGE-REQUEST asked for."""
    src = out.source
    if src is None:
        return False
    if change_ip and src[0] == primary[0]:
        return False
    return src[1] != primary[1]


def classify_filtering(o: dict[str, Outcome], ep: Endpoints) -> Verdict:
    """RFC 5780 section 4.4: does an answer from another IP / port reach the mapping."""
    both, port = o.get(Kind.FILT_CHANGE_BOTH), o.get(Kind.FILT_CHANGE_PORT)
    probes = [Kind.FILT_CHANGE_BOTH, Kind.FILT_CHANGE_PORT]
    if both is None or port is None:
        return Verdict(None, "not tested: the server has no alternate IP and port", [])
    for out in (both, port):
        err = _error(out)
        if err is not None:
            return Verdict(None, f"the server refused CHANGE-REQUEST ({err.code} {err.reason})", probes)
    for out, change_ip in ((both, True), (port, False)):
        if out.answered and not _from_changed(out, ep.primary, change_ip):
            return Verdict(None, f"the server ignored CHANGE-REQUEST (answer came from {_fmt(out.source)})",
                           probes)
    if both.answered:
        return Verdict(Filtering.ENDPOINT_INDEPENDENT,
                       f"an answer from another IP and port ({_fmt(both.source)}) got through", probes)
    if port.answered:
        return Verdict(Filtering.ADDRESS_DEPENDENT,
                       f"an answer from another port of the same IP ({_fmt(port.source)}) got through; "
                       f"one from another IP did not ({both.attempts} tries)", probes)
    return Verdict(Filtering.ADDRESS_AND_PORT_DEPENDENT,
                   f"answers from another IP ({both.attempts} tries) and from another port "
                   f"({port.attempts} tries) were both filtered", probes)


#: the largest step between two of our fresh mappings that still counts as one sequential
#: counter moved by other flows meanwhile (at 500 flows/s of others and 20 ms between
#: two of our mappings: 10)
NOISY_STEP = 32


def _next_port(last: int, delta: int) -> int:
    """The port after ``last`` when the counter steps by ``delta`` (1..65535, wrapping)."""
    return (last + delta - 1) % 65535 + 1


def classify_allocation(pairs: list[tuple[Address, Address]]) -> Verdict:
    """Port allocation across fresh mappings, in creation order (RFC 4787 section 4.2.1).

    ``pairs`` = [(local, mapped)...]. Preserving when the NAT keeps the local port;
    sequential when consecutive mapped ports differ by one constant delta (predicting
    the next), or when every step goes the same way by at most :data:`NOISY_STEP`
    (one counter that other flows move between ours, ``extra["noisy"]``); random otherwise.
    """
    if len(pairs) < 3:
        return Verdict(None, f"only {len(pairs)} fresh mappings answered (need 3)", [])
    n = len(pairs)
    kept = sum(1 for local, m in pairs if local[1] == m[1])
    ports = [m[1] for _, m in pairs]
    if kept * 5 >= n * 4:
        return Verdict(PortAllocation.PRESERVING, f"{kept} of {n} fresh mappings kept the local port",
                       extra={"confidence": round(kept / n, 2), "ports": ports})
    deltas = [b - a for a, b in zip(ports, ports[1:])]
    delta, count = Counter(deltas).most_common(1)[0]
    share = count / len(deltas)
    if delta != 0 and share >= 0.75 and abs(delta) <= 1024:
        return Verdict(PortAllocation.SEQUENTIAL,
                       f"mapped ports {ports} step by {delta} ({count} of {len(deltas)} steps)",
                       extra={"confidence": round(share, 2), "delta": delta,
                              "predicted_next_port": _next_port(ports[-1], delta), "ports": ports})
    if n >= 5:  # 3 equal steps must remain
        # one mapping may not be fresh: an endpoint-independent NAT still holding a mapping
        # of the same local port (the kernel reused an ephemeral port) hands that old
        # public port back without advancing its counter. Without that one, a constant step?
        for i in range(n):
            rest = ports[:i] + ports[i + 1:]
            steps = {b - a for a, b in zip(rest, rest[1:])}
            if len(steps) == 1 and 0 < abs(d := steps.pop()) <= 1024:
                return Verdict(PortAllocation.SEQUENTIAL,
                               f"mapped ports {rest} step by {d}; port {ports[i]} (local port "
                               f"{pairs[i][0][1]}) was an older mapping of a reused local port",
                               extra={"confidence": round((n - 1) / n, 2), "delta": d,
                                      "predicted_next_port": _next_port(rest[-1], d),
                                      "ports": ports, "outlier": ports[i]})
    smallest = min(deltas, key=abs)
    if all(0 < d * (1 if smallest > 0 else -1) <= NOISY_STEP for d in deltas):
        # one counter that other flows move too (RFC 4787 section 4.2.1; other hosts and
        # applications behind the NAT take ports between our mappings): every step goes
        # the same way and stays small. n random ports from a pool of P do that with a
        # chance near 2 * (NOISY_STEP / P) ** (n - 1): about 5e-10 for 5 ports from 8192
        share = deltas.count(smallest) / len(deltas)
        return Verdict(PortAllocation.SEQUENTIAL,
                       f"mapped ports {ports} step by {smallest} and sometimes more (steps "
                       f"{deltas}): one counter that other flows also move",
                       extra={"confidence": round(share, 2), "delta": smallest,
                              "predicted_next_port": _next_port(ports[-1], smallest),
                              "ports": ports, "noisy": True})
    distinct = len(set(deltas)) / len(deltas)
    return Verdict(PortAllocation.RANDOM, f"mapped ports {ports} follow no constant step",
                   extra={"confidence": round(distinct, 2), "ports": ports})


def classify_hairpin(o: dict[str, Outcome]) -> Verdict:
    """RFC 5780 section 3.4 (RFC 4787 section 6): a packet to our own mapped address comes back to us."""
    a2b, b2a = o.get(Kind.HAIR_A_TO_B), o.get(Kind.HAIR_B_TO_A)
    if a2b is None or b2a is None:
        return Verdict(None, "could not learn both mapped addresses", [Kind.HAIR_A, Kind.HAIR_B])
    probes = [Kind.HAIR_A_TO_B, Kind.HAIR_B_TO_A]
    got = [x for x in (a2b, b2a) if x.answered]
    if got:
        return Verdict(True, f"a request sent to our own mapped address {_fmt(got[0].dest)} arrived "
                             f"(from {_fmt(got[0].source)})", probes)
    return Verdict(False, f"requests to our own mapped addresses never arrived ({a2b.attempts} tries each "
                          "way)", probes)


def classify_unsolicited(o: dict[str, Outcome], mapping: Mapping | None) -> Verdict:
    """Did an unsolicited inbound packet from a new endpoint move our mapping toward it?

    Linux conntrack keeps a filtered inbound packet's flow; the next outbound packet to
    that endpoint then collides and gets another port. Decidable when the mapping is
    endpoint-independent (the expected port is known).
    """
    probes = [Kind.UNSOL_BIND, Kind.UNSOL_CONFIRM, Kind.UNSOL_AFTER]
    if mapping is Mapping.NO_NAT:
        return Verdict(False, "no NAT", [])
    before, after = mapped(o.get(Kind.UNSOL_BIND)), mapped(o.get(Kind.UNSOL_AFTER))
    if before is None or after is None:
        return Verdict(None, "the unsolicited-packet test did not complete (no alternate address, or "
                             "no answer)", probes)
    if mapping is not Mapping.ENDPOINT_INDEPENDENT:
        return Verdict(None, "mapping is not endpoint-independent: every new destination gets a new "
                             "mapping anyway, so a move cannot be told apart", probes)
    inbound = o.get(Kind.UNSOL_INBOUND)
    passed = bool(inbound and inbound.answered)
    if after == before:
        return Verdict(False, f"after an unsolicited packet from the alternate address "
                              f"({'delivered' if passed else 'filtered'}) the mapping toward it stayed "
                              f"{_fmt(after)}", probes)
    return Verdict(True, f"after an unsolicited packet from the alternate address "
                         f"({'delivered' if passed else 'filtered'}) the mapping toward it moved from "
                         f"{_fmt(before)} to {_fmt(after)}", probes)


def classify_lifetime(o: dict[str, Outcome], schedule: list[float]) -> Verdict:
    """RFC 5780 section 4.6: the binding was alive after t if the RESPONSE-PORT answer arrived."""
    alive, dead = [], []
    for i, t in enumerate(schedule):
        y = o.get(life_y(i))
        if y is None or y.status not in ("answered", "no-reply"):
            continue
        (alive if y.answered else dead).append(t)
    if not alive and not dead:
        return Verdict(None, "no lifetime probe completed", [])
    lo = max(alive) if alive else 0.0
    later_dead = [t for t in dead if t > lo]
    hi = min(later_dead) if later_dead else None
    text = f"alive after {lo:g} s" + (f", expired by {hi:g} s" if hi is not None else
                                       ", never expired within the test")
    return Verdict({"min_s": lo, "max_s": hi}, text, [life_y(i) for i in range(len(schedule))],
                   extra={"alive_at": alive, "expired_at": dead})
