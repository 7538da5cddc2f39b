"""The STUN server's four RFC 5780 endpoints (primary / alternate IP x port)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from stunturn_diag.sansio.netaddr import Address, parse_hostport

#: the STUN port when a server is given without one (RFC 8489 section 18.5)
STUN_PORT = 3478


def addr_dict(a: Address | None) -> dict | None:
    """``(ip, port)`` -> ``{"ip", "port"}`` for the JSON report (None stays None)."""
    return None if a is None else {"ip": a[0], "port": a[1]}


@dataclass(frozen=True)
class Endpoints:
    """Primary address and the alternates of RFC 5780 section 4.1 (None when unknown)."""

    primary: Address
    alt_port: Address | None = None  # primary IP, alternate port
    alt_ip: Address | None = None    # alternate IP, primary port
    alt_both: Address | None = None  # alternate IP and port (OTHER-ADDRESS)
    #: where the alternates came from: "info" (/v1/info), "other-address", or None
    source: str | None = None

    @property
    def behaviour_tests(self) -> bool:
        """All four endpoints known: mapping and filtering can be fully decided."""
        return None not in (self.alt_port, self.alt_ip, self.alt_both)

    def with_other_address(self, other: Address | None) -> "Endpoints":
        """Fill unknown alternates from OTHER-ADDRESS (RFC 5780 section 7.4)."""
        if other is None or self.behaviour_tests:
            return self
        pip, pport = self.primary
        oip, oport = other
        if oip == pip or oport == pport:
            return self  # not a usable alternate (RFC 5780 needs both to differ)
        return replace(self, alt_port=self.alt_port or (pip, oport),
                       alt_ip=self.alt_ip or (oip, pport),
                       alt_both=self.alt_both or (oip, oport), source=self.source or "other-address")

    def as_dict(self) -> dict:
        return {"primary": addr_dict(self.primary), "alt_port": addr_dict(self.alt_port),
                "alt_ip": addr_dict(self.alt_ip), "alt_both": addr_dict(self.alt_both),
                "source": self.source}


def _addr(obj) -> Address | None:
    if isinstance(obj, dict) and "ip" in obj and "port" in obj:
        return (str(obj["ip"]), int(obj["port"]))
    return None


def from_info(info: dict) -> Endpoints | None:
    """Endpoints from the signaling server's ``/v1/info`` ``stun`` object (None if no STUN)."""
    stun = info.get("stun") or {}
    primary = _addr(stun.get("primary"))
    if primary is None:
        return None
    return Endpoints(primary, _addr(stun.get("alt_port")), _addr(stun.get("alt_ip")),
                     _addr(stun.get("alt_both")), "info" if stun.get("alt_both") else None)


def stun_hostport(text: str) -> Address:
    """``HOST[:PORT]`` / ``[V6]:PORT`` of a STUN server -> (host, port), port 3478 when none is
    given (:func:`stunturn_diag.sansio.netaddr.parse_hostport`); ValueError when malformed."""
    return parse_hostport(text, STUN_PORT)
