"""The one conversion from a probe to the NAT profile punching shares and decides on (pure).

``punch_profile`` reads a :class:`ProbeResult`, its ``--json`` document, its
``profile()``, a profile of this very shape (cached, given with ``--nat-profile``, the
lab's ground truth), or a flat ``{"mapping", "filtering", "port_allocation"}`` (taken as
UDP), and keeps what :func:`stunturn_diag.sansio.punch.decision.profile_from_details`
reads: ``{protocol: {"mapping", "filtering", "port_allocation"}}``, the decided ones as
text, plus UDP's ``mapping_moves_on_unsolicited`` when decided (true/false: the full
probe's move test; the quick punch probe leaves it out), a protocol only when one of
them is decided. Anything unreadable gives ``{}``.
"""

from __future__ import annotations

from stunturn_diag.sansio.probe.result import ProbeResult

PROTOCOLS = ("udp", "tcp")
#: the verdicts the punch decision reads, per protocol
PUNCH_FIELDS = ("mapping", "filtering", "port_allocation")
#: the yes/no verdicts it reads, per protocol (:func:`.punch.decision.priming_gap`)
PUNCH_FLAGS = {"udp": ("mapping_moves_on_unsolicited",)}


def punch_profile(report: object) -> dict:
    """See the module docstring."""
    if isinstance(report, ProbeResult):
        report = report.to_json()
    out: dict = {}
    if not isinstance(report, dict):
        return out
    for proto in PROTOCOLS:
        section = report.get(proto) if isinstance(report.get(proto), dict) else None
        if section is None and "mapping" in report and proto == "udp":
            section = report
        decided = {k: section[k] for k in PUNCH_FIELDS if isinstance((section or {}).get(k), str)}
        decided.update({k: section[k] for k in PUNCH_FLAGS.get(proto, ())
                        if isinstance((section or {}).get(k), bool)})
        if decided:
            out[proto] = decided
    return out
