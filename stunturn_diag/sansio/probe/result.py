"""``ProbeResult``: every verdict, its evidence and timings; ``to_json()`` is the stable schema.

Schema ``stunturn-diag/probe`` version 1 (documented in README "NAT probe"). Values use
the :mod:`stunturn_diag.behaviour` vocabulary; ``null`` means undetermined, and the
reason is in the matching ``evidence`` entry and in ``undetermined``.

Not run is not the same as broken: ``skipped`` lists tests left out for a documented,
expected reason (no raw sockets without root, ``--no-tcp``, a ``--stun`` server without
probe assist): the status stays ``diagnosed``. ``failed`` lists tests that should have
run but broke (a helper failed: Scapy, a raw socket, the capture, the TTL walk, a crashed
runner thread): the status is ``partial`` (exit 3), whatever else was decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from stunturn_diag.behaviour import classic_label
from stunturn_diag.sansio.probe.classify import Verdict

SCHEMA = "stunturn-diag/probe"
SCHEMA_VERSION = 1

#: exit statuses of ``stunturn-diag probe``
EXIT_DIAGNOSED = 0
EXIT_PARTIAL = 3
EXIT_UNREACHABLE = 4

#: the fields whose null makes a diagnosis "partial"
CORE_UDP = ("mapping", "filtering", "port_allocation", "hairpin")
CORE_TCP = ("mapping", "filtering", "unsolicited_syn", "port_allocation")
#: every ``udp`` key (present, null when undetermined, in every document)
UDP_KEYS = ("reachable", "mapping", "filtering", "port_preservation", "port_allocation",
            "port_allocation_delta", "predicted_next_port", "port_allocation_confidence", "hairpin",
            "mapping_moves_on_unsolicited", "mapped_address", "local_address", "classic_label", "evidence")
#: every ``tcp`` verdict key, and the extra keys beside them (present, null, when TCP did not run)
TCP_VERDICT_KEYS = ("mapping", "port_preservation", "port_allocation", "filtering", "unsolicited_syn",
                    "simultaneous_open")
TCP_EXTRA_KEYS = ("mapped_address", "local_address", "port_allocation_delta", "predicted_next_port",
                  "port_allocation_confidence", "errors", "accepted")


def _plain(v: Any) -> Any:
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass
class ProbeResult:
    """The diagnosis. ``udp``/``tcp`` map field names to :class:`Verdict`s."""

    server: dict
    local_ip: str | None
    public_ip: str | None
    nat: bool | None
    elapsed_ms: float
    udp_reachable: bool
    tcp_reachable: bool = False
    udp: dict[str, Verdict] = field(default_factory=dict)
    udp_extra: dict = field(default_factory=dict)
    tcp: dict[str, Verdict] = field(default_factory=dict)
    tcp_extra: dict = field(default_factory=dict)
    tcp_ran: bool = True
    layers: dict | None = None
    probes: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    #: tests that broke outside any verdict (``{"test", "reason"}``): pcap, nat_layers, tcp
    failures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the gateway's port-mapping services (stunturn_diag.portmap.assess); None = not asked
    port_mapping: dict | None = None
    #: verdicts not tested on purpose ("udp.hairpin"... for the punch profile; also in
    #: ``skipped``): null, and not undetermined
    left_out: tuple[str, ...] = ()
    #: the IPv6 diagnosis (probe/dual_stack.py summary / absent); None = not asked (library use)
    ipv6: dict | None = None
    #: the IPv6 run itself (for the report's "what this means"; not serialised)
    ipv6_result: "ProbeResult | None" = None

    def value(self, proto: str, name: str) -> Any:
        v = (self.udp if proto == "udp" else self.tcp).get(name)
        return None if v is None else v.value

    @property
    def undetermined(self) -> list[dict]:
        out = []
        for proto, fields, verdicts in (("udp", CORE_UDP, self.udp), ("tcp", CORE_TCP, self.tcp)):
            if proto == "tcp" and not self.tcp_ran:
                continue
            for name in fields:
                v = verdicts.get(name)
                if (v is not None and not v.applicable) or f"{proto}.{name}" in self.left_out:
                    continue
                if v is None or v.value is None:
                    out.append({"field": f"{proto}.{name}", "reason": v.reason if v else "not tested"})
        for proto, verdicts in (("udp", self.udp), ("tcp", self.tcp if self.tcp_ran else {})):
            for name, v in verdicts.items():  # any verdict whose test broke, core or not
                if v.failed and f"{proto}.{name}" not in {u["field"] for u in out}:
                    out.append({"field": f"{proto}.{name}", "reason": v.reason})
        return out

    @property
    def failed(self) -> list[dict]:
        """Every test that should have run but broke (``{"test", "reason"}``)."""
        out = list(self.failures)
        for proto, verdicts in (("udp", self.udp), ("tcp", self.tcp if self.tcp_ran else {})):
            out += [{"test": f"{proto}.{name}", "reason": v.reason} for name, v in verdicts.items() if v.failed]
        return out

    @property
    def status(self) -> str:
        """``diagnosed`` | ``partial`` | ``unreachable``."""
        if not self.udp_reachable and not self.tcp_reachable:
            return "unreachable"
        return "partial" if self.undetermined or self.failed else "diagnosed"

    @property
    def exit_code(self) -> int:
        return {"diagnosed": EXIT_DIAGNOSED, "partial": EXIT_PARTIAL,
                "unreachable": EXIT_UNREACHABLE}[self.status]

    @property
    def classic_label(self) -> str:
        return classic_label(self.value("udp", "mapping"), self.value("udp", "filtering"))

    def to_json(self) -> dict:
        """The versioned ``--json`` document."""
        def block(verdicts: dict[str, Verdict], extra: dict) -> dict:
            d: dict = {k: _plain(v.value) for k, v in verdicts.items()}
            d.update(_plain(extra))
            d["evidence"] = {k: _plain(v.evidence()) for k, v in verdicts.items()}
            return d
        udp = {"reachable": self.udp_reachable}
        udp.update(block(self.udp, self.udp_extra))
        udp["classic_label"] = self.classic_label
        for k in UDP_KEYS:
            udp.setdefault(k, None)
        tcp = {"reachable": self.tcp_reachable if self.tcp_ran else None}
        tcp.update(block(self.tcp, self.tcp_extra) if self.tcp_ran else
                   dict.fromkeys(TCP_VERDICT_KEYS + TCP_EXTRA_KEYS) | {"evidence": {}})
        for k in TCP_VERDICT_KEYS + TCP_EXTRA_KEYS:
            tcp.setdefault(k, None)
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "exit_code": self.exit_code,
            "nat": self.nat,
            "public_ip": self.public_ip,
            "local_ip": self.local_ip,
            "elapsed_ms": self.elapsed_ms,
            "server": self.server,
            "udp": udp,
            "tcp": tcp,
            "nat_layers": self.layers,
            "undetermined": self.undetermined,
            "skipped": self.skipped,
            "failed": self.failed,
            "notes": self.notes,
            "timings": self.timings,
            "probes": self.probes,
            "port_mapping": self.port_mapping,
            "ipv6": self.ipv6,
        }

    def profile(self) -> dict:
        """A compact summary for a punching peer (fits the signaling ``nat`` detail)."""
        keys = ("mapping", "filtering", "port_allocation", "port_allocation_delta", "predicted_next_port",
                "hairpin", "mapping_moves_on_unsolicited")
        j = self.to_json()
        return {"nat": self.nat, "public_ip": self.public_ip,
                "udp": {k: j["udp"].get(k) for k in keys},
                "tcp": {k: j["tcp"].get(k) for k in ("mapping", "filtering", "simultaneous_open")}}
