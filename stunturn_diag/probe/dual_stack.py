"""Dual stack: the IPv4 and the IPv6 diagnosis at once, one document.

A dual-stack host has two independent paths: usually a NAT44 on IPv4 and, on IPv6, no
NAT but a stateful firewall that filters like one (RFC 6092 recommends
address-and-port-dependent filtering for home gateways), sometimes a translator (NPTv6,
RFC 6296; NAT66). :func:`run_dual_stack` runs :func:`~stunturn_diag.probe.api.run_probe`
for the server URL's own family and, when the server lists IPv6 addresses
(``/v1/info`` ``families.ipv6``) and this host has a route to them, a second
``run_probe`` over IPv6 in a thread beside it. The result's ``ipv6`` block
(:func:`summary`, or :func:`absent` with the reason) joins the JSON document; the
exit status stays the first family's: a host without IPv6 is not an error.

The plan (:func:`ipv6_plan`) and the verdict wording (:func:`family_verdict`) are pure.
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Callable
from urllib.parse import urlsplit

from ..behaviour import Filtering, Mapping
from ..errors import ProbeError, SignalingError, StunturnError
from ..signaling import SignalingClient, parse_server_url
from stunturn_diag.sansio.probe.result import ProbeResult

#: longest wait for the IPv6 diagnosis once the first family's is done (seconds)
JOIN_TIMEOUT = 120.0

_RFC6092 = "a stateful firewall; RFC 6092 recommends this for home gateways"


def ipv6_plan(info: dict) -> tuple[str | None, str | None]:
    """(URL of the server over IPv6, None) or (None, why IPv6 is not diagnosed) (pure)."""
    families = info.get("families")
    if not isinstance(families, dict):
        return None, "the server does not list its IPv6 addresses (an older server version)"
    six = families.get("ipv6")
    if not six:
        return None, "the server has no IPv6 address (serve --ip6 V6 --alt-ip6 V6)"
    if not (six.get("stun") or {}).get("enabled"):
        return None, "the server runs no STUN responder over IPv6"
    ip, port = six["http"]["ip"], six["http"]["port"]
    if ipaddress.ip_address(ip).is_unspecified:
        return None, "the server listens on every IPv6 address (::) and names none to probe"
    return f"http://[{ip}]:{port}", None


def for_url_family(info: dict, url: str) -> dict:
    """``info`` with ``stun`` being the STUN endpoints of the URL host's IP family (a
    dual-stack server's ``families``); unchanged for a hostname or a single-family server."""
    try:
        host = urlsplit(parse_server_url(url)).hostname or ""
        version = ipaddress.ip_address(host).version
    except (ValueError, StunturnError):
        return info
    fam = (info.get("families") or {}).get("ipv6" if version == 6 else "ipv4")
    if not fam or not fam.get("stun"):
        return info
    return info | {"stun": fam["stun"]}


def family_verdict(nat: bool | None, mapping: str | None, filtering: str | None) -> str:
    """One line: what a family's gateway is, e.g. "no NAT, but address-and-port-dependent
    filtering (a stateful firewall ...)" (pure; values of the probe's JSON)."""
    if nat is None and mapping is None:
        return "undetermined"
    if mapping == Mapping.NO_NAT.value or nat is False:
        if filtering == Filtering.ENDPOINT_INDEPENDENT.value:
            return "no NAT, no filtering: a public, open address"
        if filtering is None:
            return "no NAT; filtering undetermined"
        return f"no NAT, but {filtering} filtering ({_RFC6092})"
    return f"NAT: {mapping or 'undetermined'} mapping, {filtering or 'undetermined'} filtering"


def summary(result: ProbeResult) -> dict:
    """The ``ipv6`` block of a diagnosis run over IPv6 (same vocabulary as the top level)."""
    j = result.to_json()
    reachable = j["status"] != "unreachable"
    return {"reachable": reachable, "status": j["status"], "nat": j["nat"],
            "public_ip": j["public_ip"], "local_ip": j["local_ip"], "elapsed_ms": j["elapsed_ms"],
            "verdict": family_verdict(j["nat"], j["udp"]["mapping"] or j["tcp"]["mapping"],
                                      j["udp"]["filtering"] or j["tcp"]["filtering"])
            if reachable else None,
            "server": j["server"], "udp": j["udp"], "tcp": j["tcp"], "nat_layers": j["nat_layers"],
            "undetermined": j["undetermined"], "skipped": j["skipped"], "failed": j["failed"],
            "notes": j["notes"], "reason": None if reachable else "; ".join(j["notes"]) or "no answer"}


def absent(reason: str) -> dict:
    """The ``ipv6`` block when IPv6 was not diagnosed (no route, no server address...)."""
    return {"reachable": False, "status": None, "nat": None, "public_ip": None, "local_ip": None,
            "elapsed_ms": None, "verdict": None, "server": None, "udp": None, "tcp": None,
            "nat_layers": None, "undetermined": [], "skipped": [], "failed": [], "notes": [],
            "reason": reason}


def _url_is_ipv6(server: str) -> bool:
    try:
        host = urlsplit(parse_server_url(server)).hostname or ""
        return ipaddress.ip_address(host).version == 6
    except (ValueError, StunturnError):
        return False


def _stun_is_ipv6(stun: str) -> bool:
    from stunturn_diag.sansio.probe.endpoints import stun_hostport

    try:
        return ipaddress.ip_address(stun_hostport(stun)[0]).version == 6
    except ValueError:
        return False


def _route_reason(url6: str, info6_stun: dict) -> str | None:
    from .udp_runner import route_source_ip

    primary = info6_stun.get("primary") or {}
    try:
        route_source_ip((primary["ip"], primary["port"]))
    except (ProbeError, KeyError, OSError) as exc:
        return f"no IPv6 route to the server ({exc})"
    return None


def run_dual_stack(server: str | None = None, *, stun: str | None = None, ipv6: bool = True,
                   progress: Callable[[str], None] | None = None,
                   probe: Callable[..., ProbeResult] | None = None, **options) -> ProbeResult:
    """:func:`run_probe` (same ``options``) plus, concurrently, the IPv6 diagnosis; the
    result's ``ipv6`` block holds it (``ipv6=False``: absent, "not asked")."""
    if probe is None:
        from .api import run_probe as probe
    say = progress or (lambda m: None)
    v6_job: dict = {}
    thread = None
    info = None                       # /v1/info, fetched once and shared by both runs
    tls = options.get("tls")
    if not ipv6:
        reason = "not asked (--no-ipv6)"
    elif stun is not None:   # an IPv6 --stun address: the first diagnosis is the IPv6 one
        reason = None if _stun_is_ipv6(stun) else "--stun: only the family of the address given is probed"
    elif _url_is_ipv6(server or ""):
        reason = None   # the first diagnosis is the IPv6 one
    else:
        try:
            info = SignalingClient(server, timeout=5.0, tls=tls).info()
            url6, reason = ipv6_plan(info)
        except (SignalingError, ValueError, KeyError, TypeError) as exc:
            info, url6, reason = None, None, f"the server's IPv6 addresses are unknown ({exc})"
        if url6 is not None:
            reason = _route_reason(url6, info["families"]["ipv6"]["stun"])
        if url6 is not None and reason is None:
            def job() -> None:
                try:
                    v6_job["result"] = probe(url6, tcp=options.get("tcp", True), ttl_walk=options.get(
                        "ttl_walk", True), port_mapping=False, progress=None, tls=tls, info=info)
                except Exception as exc:  # becomes the ipv6 block's reason, never the run's error
                    v6_job["error"] = f"{type(exc).__name__}: {exc}"
            say(f"probing IPv6 via {url6} at the same time ...")
            thread = threading.Thread(target=job, name="probe-ipv6", daemon=True)
            thread.start()
    if info is not None:
        options["info"] = info
    result = probe(server, stun=stun, progress=progress, **options)
    if reason is None and thread is None:           # the URL (or --stun address) itself is IPv6
        result.ipv6, result.ipv6_result = summary(result), result
        return result
    if thread is not None:
        thread.join(JOIN_TIMEOUT)
        if "result" in v6_job:
            result.ipv6, result.ipv6_result = summary(v6_job["result"]), v6_job["result"]
            return result
        reason = (f"the IPv6 diagnosis failed: {v6_job['error']}" if "error" in v6_job
                  else f"the IPv6 diagnosis did not end within {JOIN_TIMEOUT:g} s")
    result.ipv6 = absent(reason)
    return result
