"""I/O runners for the port-mapping codecs: PCP, NAT-PMP (UDP to the gateway's port
5351) and UPnP IGD (SSDP multicast, then HTTP/SOAP).

Every exchange is bounded by a deadline on an injected clock (``clock``, default
``time.monotonic``). UDP requests follow RFC 6886 section 3.1's schedule (first
retransmission after 250 ms, the interval doubling), cut at ``tries`` sends and at the
deadline; RFC 6887 section 8.1.1 allows a client this (its 3 s initial timeout is a
floor for a long-lived client, not for a diagnosis that must end). A missing answer is
``None`` (evidence), never an exception; only unusable input raises.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urlsplit

from ..errors import PortMapDecodeError
from stunturn_diag.sansio.portmap import natpmp_codec as natpmp
from stunturn_diag.sansio.portmap import pcp_codec as pcp
from stunturn_diag.sansio.portmap import upnp_codec as upnp

T = TypeVar("T")
Clock = Callable[[], float]

INITIAL_TIMEOUT = 0.25
DEFAULT_TRIES = 4
#: how often a wait looks at its ``stop`` event
STOP_POLL = 0.005


def send_times(initial: float = INITIAL_TIMEOUT, tries: int = DEFAULT_TRIES) -> list[float]:
    """Offsets (s) of each send: 0, 0.25, 0.75, 1.75, ... (pure)."""
    out, t, gap = [], 0.0, initial
    for _ in range(max(1, tries)):
        out.append(t)
        t, gap = t + gap, gap * 2
    return out


def parse_proc_route(text: str) -> str | None:
    """The IPv4 default gateway from ``/proc/net/route`` text (pure): the first line
    with destination 00000000, mask 00000000 and the gateway flag (0x2)."""
    import ipaddress

    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            dest, gw, flags, mask = int(cols[1], 16), int(cols[2], 16), int(cols[3], 16), int(cols[7], 16)
        except ValueError:
            continue
        if dest == 0 and mask == 0 and flags & 0x2 and gw:
            return str(ipaddress.IPv4Address(gw.to_bytes(4, "little")))
    return None


def default_gateway() -> str | None:
    """This host's IPv4 default gateway (Linux), or None."""
    try:
        with open("/proc/net/route", encoding="ascii") as fh:
            return parse_proc_route(fh.read())
    except OSError:
        return None


def udp_exchange(sock: socket.socket, dest: tuple[str, int], payload: bytes,
                 decode: Callable[[bytes], T], accept: Callable[[T], bool], *,
                 deadline: float, clock: Clock = time.monotonic,
                 initial: float = INITIAL_TIMEOUT, tries: int = DEFAULT_TRIES,
                 stop: threading.Event | None = None) -> T | None:
    """Send ``payload`` to ``dest`` on the retransmission schedule until an answer from
    ``dest`` decodes and is ``accept``-ed, ``deadline`` (on ``clock``) passes or ``stop``
    is set (looked at every :data:`STOP_POLL` seconds)."""
    start = clock()
    schedule = [start + t for t in send_times(initial, tries)]
    final = min(deadline, start + send_times(initial, tries + 1)[-1])
    while True:
        now = clock()
        if schedule and schedule[0] <= now:
            schedule.pop(0)
            try:
                sock.sendto(payload, dest)
            except OSError:
                return None               # no route to the gateway: nobody can answer
            continue
        wake = min([final] + schedule[:1])
        if now >= final or _stopped(stop):
            return None
        readable, _, _ = select.select([sock], [], [], _wait(wake - now, stop))
        if not readable:
            continue
        try:
            data, src = sock.recvfrom(2048)
        except OSError:                   # e.g. ICMP port unreachable surfaced as ECONNREFUSED
            continue
        if (src[0], src[1]) != tuple(dest):
            continue
        try:
            answer = decode(data)
        except PortMapDecodeError:
            continue
        if accept(answer):
            return answer


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _wait(seconds: float, stop: threading.Event | None) -> float:
    return max(0.0, seconds if stop is None else min(seconds, STOP_POLL))


def _udp_socket(gateway: str) -> tuple[socket.socket, str]:
    """A UDP socket towards ``gateway``'s port 5351 and the local address it uses."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect((gateway, pcp.SERVER_PORT))
        local_ip = sock.getsockname()[0]
    except OSError:
        sock.close()
        raise
    return sock, local_ip


# -- NAT-PMP (RFC 6886) -------------------------------------------------------------

def natpmp_request(gateway: str, req, *, deadline: float, clock: Clock = time.monotonic,
                   tries: int = DEFAULT_TRIES, stop: threading.Event | None = None
                   ) -> natpmp.Response | None:
    """One NAT-PMP request/response exchange with the gateway."""
    try:
        sock, _ = _udp_socket(gateway)
    except OSError:
        return None
    with sock:
        return udp_exchange(sock, (gateway, natpmp.SERVER_PORT), natpmp.encode_request(req),
                            natpmp.decode_response, lambda r: natpmp.matches(req, r),
                            deadline=deadline, clock=clock, tries=tries, stop=stop)


# -- PCP (RFC 6887) -----------------------------------------------------------------

def pcp_map(gateway: str, protocol: int, internal_port: int, *, lifetime: int,
            deadline: float, nonce: bytes | None = None, suggested_port: int = 0,
            clock: Clock = time.monotonic, tries: int = DEFAULT_TRIES,
            sock: socket.socket | None = None, stop: threading.Event | None = None
            ) -> tuple[pcp.Request, pcp.Response | None]:
    """A PCP MAP exchange (RFC 6887 section 11). ``nonce`` defaults to 12 fresh random
    bytes; keep the returned request's nonce to renew or delete the mapping."""
    own = sock is None
    if own:
        try:
            sock, local_ip = _udp_socket(gateway)
        except OSError:
            return pcp.map_request(nonce or bytes(12), "0.0.0.0", protocol, internal_port), None
    else:
        local_ip = sock.getsockname()[0]
    req = pcp.map_request(nonce or os.urandom(pcp.NONCE_LENGTH), local_ip, protocol,
                          internal_port, lifetime=lifetime, suggested_port=suggested_port)
    try:
        answer = udp_exchange(sock, (gateway, pcp.SERVER_PORT), pcp.encode_request(req),
                              pcp.decode_response, lambda r: pcp.matches(req, r),
                              deadline=deadline, clock=clock, tries=tries, stop=stop)
    finally:
        if own:
            sock.close()
    return req, answer


# -- UPnP IGD -----------------------------------------------------------------------

@dataclass(frozen=True)
class Igd:
    """A discovered gateway: its SSDP answer and best WAN connection service."""

    answer: upnp.SsdpAnswer
    service: upnp.WanService


def ssdp_search(*, deadline: float, clock: Clock = time.monotonic,
                source_ip: str = "", tries: int = DEFAULT_TRIES,
                stop: threading.Event | None = None) -> upnp.SsdpAnswer | None:
    """M-SEARCH for an IGD (v1 target: IGD:2 devices answer it too) on the schedule;
    the first parseable answer wins."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
            sock.bind((source_ip, 0))
        except OSError:
            return None
        payload = upnp.msearch(upnp.IGD_DEVICE_TYPES[1])
        start = clock()
        schedule = [start + t for t in send_times(INITIAL_TIMEOUT, tries)]
        while True:
            now = clock()
            if now >= deadline or _stopped(stop):
                return None
            if schedule and schedule[0] <= now:
                schedule.pop(0)
                try:
                    sock.sendto(payload, upnp.SSDP_ADDRESS)
                except OSError:
                    return None
                continue
            wake = min([deadline] + schedule[:1])
            readable, _, _ = select.select([sock], [], [], _wait(wake - now, stop))
            if not readable:
                continue
            try:
                data, _src = sock.recvfrom(4096)
                return upnp.parse_ssdp_answer(data)
            except (OSError, PortMapDecodeError):
                continue


def _http(method: str, url: str, *, deadline: float, clock: Clock, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes] | None:
    """One bounded HTTP exchange (``None`` on any failure or past the deadline)."""
    parts = urlsplit(url)
    timeout = deadline - clock()
    if timeout <= 0 or parts.scheme != "http" or not parts.hostname:
        return None
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(upnp.MAX_XML + 1)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def igd_describe(answer: upnp.SsdpAnswer, *, deadline: float,
                 clock: Clock = time.monotonic) -> Igd | None:
    """Fetch and parse the device description; the best WAN connection service."""
    got = _http("GET", answer.location, deadline=deadline, clock=clock)
    if got is None or got[0] != 200:
        return None
    try:
        services = upnp.parse_description(got[1], answer.location)
    except PortMapDecodeError:
        return None
    return Igd(answer, services[0]) if services else None


def soap_call(igd: Igd, action: str, args: dict | None = None, *, deadline: float,
              clock: Clock = time.monotonic) -> upnp.SoapResult | None:
    """Call one action of the gateway's WAN connection service."""
    headers, body = upnp.soap_request(igd.service.service_type, action, args)
    got = _http("POST", igd.service.control_url, deadline=deadline, clock=clock, body=body,
                headers=headers)
    if got is None:
        return None
    try:
        return upnp.parse_soap_response(got[0], got[1], action)
    except PortMapDecodeError:
        return None
