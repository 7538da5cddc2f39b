"""Request body validation for every route (pure: bytes in, typed values out).

One style for all of them: a ``*_request(obj)`` function per route checks the decoded
JSON object's fields (:func:`_check_fields`: missing and unknown ones), validates each
with a field function (``*_field(value, name)``) and returns a frozen dataclass;
anything wrong raises :class:`BadRequest` with a message naming the offending field,
which the routes answer with ``400 {"error": "bad-request", "message": ...}``.

- signaling: :func:`initiate_request`, :func:`checkin_request`;
- probe-assist: :func:`connect_back_request`, :func:`simopen_request`;
- the relay exchange: :func:`exchange_request`.

Nothing here touches sockets, clocks or Flask.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass, field

from stunturn_diag.sansio.assist_frame import MAX_TOKEN
from stunturn_diag.sansio.netaddr import unmapped_address

#: rendezvous identifier: hex of 16..64 bytes (clients send scrypt(key) as 32 bytes, 64 digits)
RENDEZVOUS_MIN = 32
RENDEZVOUS_MAX = 128
PROTOCOLS = ("udp", "tcp")
#: what a TURN relay may relay, in the order an offer lists them (udp: RFC 8656; tcp: RFC
#: 6062 TCP allocations); ``ServerConfig.turn.transports`` is drawn from these
RELAY_TRANSPORTS = ("udp", "tcp")
#: timeouts beyond this are rejected outright (smaller ones are capped by the server)
TIMEOUT_MAX = 3600.0
LOCAL_MAX = 8
NAT_MAX_BYTES = 2048
SOFTWARE_MAX = 64
MAX_JSON_DEPTH = 16
#: probe-assist: the server's sources a connect-back may come from, attempts per source,
#: connect timeout bounds (ms), the simultaneous-open delay bound (ms)
ASSIST_SOURCES = ("alt-ip", "alt-port")
MAX_ATTEMPTS = 3
MIN_TIMEOUT_MS = 50
MAX_TIMEOUT_MS = 2000
MAX_DELAY_MS = 1000
#: what an omitted probe-assist field means
DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT_MS, DEFAULT_DELAY_MS = 2, 500, 100
#: relay exchange: longest match id and token
MATCH_ID_MAX, TOKEN_MAX = 64, 200


class BadRequest(ValueError):
    """The request body is not acceptable; ``str(exc)`` says why."""


@dataclass(frozen=True)
class InitiateRequest:
    rendezvous: str
    target_ip: str  # canonical text form (see :func:`canonical_ip`); the first of target_ips
    protocol: str
    timeout: float | None
    details: dict = field(default_factory=dict)
    #: every receiver IP the initiator named (one per IP family, at most two)
    target_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckinRequest:
    rendezvous: str
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectBackRequest:
    """``POST /v1/probe/tcp-connect``: connect back to the caller's ``port``."""

    port: int
    sources: tuple[str, ...]  # of ASSIST_SOURCES, distinct
    attempts: int
    timeout_ms: int
    token: bytes


@dataclass(frozen=True)
class SimopenRequest:
    """``POST /v1/probe/tcp-simopen``: connect to the caller's ``port`` ``delay_ms`` later."""

    port: int
    delay_ms: int
    timeout_ms: int
    token: bytes


@dataclass(frozen=True)
class ExchangeRequest:
    """``POST /v1/relay``: this peer's match token, and its relayed address to post."""

    match_id: str
    token: str
    relayed: tuple[str, int] | None = None
    transport: str = "udp"           # "tcp": an RFC 6062 TCP allocation's address


def canonical_ip(text: str) -> str:
    """Canonical text form of an IP; IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes IPv4.

    Raises ``ValueError`` for anything that is not a numeric IPv4/IPv6 address.
    """
    addr = unmapped_address(ipaddress.ip_address(text))
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise ValueError("scoped IPv6 addresses are not accepted")
    return str(addr)


def _reject_constant(name: str):
    raise BadRequest(f"invalid JSON: {name} is not allowed")


def _no_duplicates(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise BadRequest(f"invalid JSON: duplicate field {key!r}")
        out[key] = value
    return out


def _depth(value, limit: int) -> int:
    """Nesting depth of a decoded JSON value (stops counting beyond ``limit``)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def parse_json_object(body: bytes) -> dict:
    """Decode a UTF-8 JSON object body; NaN/Infinity, duplicate keys and deep nesting are refused."""
    if not body:
        raise BadRequest("empty body: send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"body must be a JSON object, got {type(value).__name__}")
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise BadRequest(f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _check_fields(obj: dict, required: set[str], optional: set[str], where: str) -> None:
    missing = sorted(required - obj.keys())
    if missing:
        raise BadRequest(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(obj.keys() - required - optional)
    if unknown:
        raise BadRequest(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


_KIND_NAMES = {dict: "an object", list: "a list", str: "a string"}


def _of_kind(value, kind: type, name: str, max_len: int | None = None, what: str = ""):
    """``value`` if it is a ``kind`` (object / list / string) of at most ``max_len`` items."""
    if not isinstance(value, kind):
        raise BadRequest(f"{name} must be {what or _KIND_NAMES[kind]}, got {_type_name(value)}")
    if max_len is not None and len(value) > max_len:
        unit = "characters" if kind is str else "items"
        raise BadRequest(f"{name} may hold at most {max_len} {unit}, got {len(value)}")
    return value


def hex_field(value, name: str, min_digits: int, max_digits: int) -> str:
    """An even number of ``min_digits``..``max_digits`` lowercase hex digits."""
    _of_kind(value, str, name)
    if not min_digits <= len(value) <= max_digits or len(value) % 2 or \
            not all(ch in "0123456789abcdef" for ch in value):
        raise BadRequest(f"{name} must be {min_digits}-{max_digits} lowercase hex "
                         f"digits (an even number), got {len(value)} characters")
    return value


def rendezvous(value) -> str:
    """Lowercase hex, 32-128 digits: an identifier the client derived from its key.

    The server never sees the access key itself (the client's scrypt of it,
    stunturn_diag.sansio.punch.keys); it keys-hashes whatever identifier it receives.
    """
    return hex_field(value, "rendezvous", RENDEZVOUS_MIN, RENDEZVOUS_MAX)


def _no_access_key(obj: dict) -> None:
    """Clients before issue 10 sent the key itself: refuse it, and say what to do."""
    if "access_key" in obj:
        raise BadRequest("the access_key field is no longer accepted: this server never takes "
                         "the key itself; upgrade the client to a stunturn-diag that sends a "
                         "rendezvous identifier derived from the key (and the punch "
                         "handshake v2)")


def ip_field(value, name: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be an IP address string, got {_type_name(value)}")
    if len(value) > 64:
        raise BadRequest(f"{name} is too long to be an IP address")
    try:
        return canonical_ip(value)
    except ValueError:
        raise BadRequest(f"{name} is not a valid IPv4/IPv6 address: {value!r}") from None


def int_field(value, name: str, low: int, high: int, what: str = "") -> int:
    """An integer (not a boolean) in ``low..high`` (``what`` names it in the message)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer, got {_type_name(value)}")
    if not low <= value <= high:
        raise BadRequest(f"{name} must be {what}{low}-{high}, got {value}")
    return value


def port_field(value, name: str) -> int:
    return int_field(value, name, 1, 65535, "a port ")


def number_field(value, name: str, low: float, high: float) -> float:
    """A number (not a boolean) in ``low..high`` (NaN and the infinities are outside)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number, got {_type_name(value)}")
    if not low <= value <= high:  # compared before any float(): a huge int stays exact
        raise BadRequest(f"{name} must be a number {low:g}..{high:g}, got {value!r}"[:200])
    return value


def protocol_field(value) -> str:
    if not isinstance(value, str) or value.lower() not in PROTOCOLS:
        raise BadRequest(f"protocol must be one of {', '.join(PROTOCOLS)}, got {value!r}"[:200])
    return value.lower()


def transport_field(value) -> str:
    """A relayed transport: one of :data:`RELAY_TRANSPORTS` (exactly as spelled there)."""
    if not isinstance(value, str) or value not in RELAY_TRANSPORTS:
        raise BadRequest(f"transport must be one of {', '.join(RELAY_TRANSPORTS)}, got {value!r}"[:200])
    return value


def timeout_field(value) -> float | None:
    """Seconds to hold the long-poll: a finite number in (0, 3600]; ``null`` means server default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"timeout must be a number of seconds, got {_type_name(value)}")
    if isinstance(value, int) and not 0 < value <= TIMEOUT_MAX:  # before float(): may overflow
        raise BadRequest(f"timeout must be > 0 and <= {TIMEOUT_MAX:g} seconds, got {value!r}"[:200])
    value = float(value)
    if not math.isfinite(value) or not 0 < value <= TIMEOUT_MAX:
        raise BadRequest(f"timeout must be > 0 and <= {TIMEOUT_MAX:g} seconds, got {value!r}")
    return value


def endpoint(value, name: str) -> dict:
    _of_kind(value, dict, name, what="an object {ip, port}")
    _check_fields(value, {"ip", "port"}, set(), name)
    return {"ip": ip_field(value["ip"], f"{name}.ip"), "port": port_field(value["port"], f"{name}.port")}


def details_field(value) -> dict:
    """Validate the optional peer ``details`` (srflx, local, nat, software)."""
    if value is None:
        return {}
    _of_kind(value, dict, "details")
    _check_fields(value, set(), {"srflx", "local", "nat", "software"}, "details")
    out: dict = {}
    if "srflx" in value:
        out["srflx"] = endpoint(value["srflx"], "details.srflx")
    if "local" in value:
        local = _of_kind(value["local"], list, "details.local", LOCAL_MAX)
        out["local"] = [endpoint(item, f"details.local[{i}]") for i, item in enumerate(local)]
    if "nat" in value:
        nat = _of_kind(value["nat"], dict, "details.nat")
        size = len(json.dumps(nat, separators=(",", ":")).encode())
        if size > NAT_MAX_BYTES:
            raise BadRequest(f"details.nat must be at most {NAT_MAX_BYTES} bytes of JSON, got {size}")
        out["nat"] = nat
    if "software" in value:
        out["software"] = _of_kind(value["software"], str, "details.software", SOFTWARE_MAX)
    return out


def initiate_request(obj: dict) -> InitiateRequest:
    """Validate a decoded ``POST /v1/initiate`` body."""
    _no_access_key(obj)
    _check_fields(obj, {"rendezvous", "target_ip", "protocol"}, {"timeout", "details", "target_ip6"},
                  "initiate")
    targets = target_ips_field(obj["target_ip"], obj.get("target_ip6"))
    return InitiateRequest(
        rendezvous=rendezvous(obj["rendezvous"]),
        target_ip=targets[0],
        protocol=protocol_field(obj["protocol"]),
        timeout=timeout_field(obj.get("timeout")),
        details=details_field(obj.get("details")),
        target_ips=targets,
    )


def target_ips_field(value, v6=None) -> tuple[str, ...]:
    """``target_ip`` (one IP, or a list of one IP per family) plus the optional
    ``target_ip6``: the receiver's addresses, canonical, at most one IPv4 and one IPv6."""
    if isinstance(value, list):
        if not 1 <= len(value) <= 2:
            raise BadRequest("target_ip as a list holds one or two IPs (one per IP family)")
        ips = [ip_field(item, f"target_ip[{i}]") for i, item in enumerate(value)]
    else:
        ips = [ip_field(value, "target_ip")]
    if v6 is not None:
        ip6 = ip_field(v6, "target_ip6")
        if ":" not in ip6:
            raise BadRequest(f"target_ip6 must be an IPv6 address, got {v6!r}")
        ips.append(ip6)
    families = [":" in ip for ip in ips]
    if len(set(families)) != len(families):
        raise BadRequest("name at most one receiver IP per family (one IPv4, one IPv6)")
    return tuple(ips)


def checkin_request(obj: dict) -> CheckinRequest:
    """Validate a decoded ``POST /v1/checkin`` body."""
    _no_access_key(obj)
    _check_fields(obj, {"rendezvous"}, {"details"}, "checkin")
    return CheckinRequest(rendezvous=rendezvous(obj["rendezvous"]),
                          details=details_field(obj.get("details")))


def _assist_fields(obj: dict, where: str, optional: set[str]) -> tuple[int, int, bytes]:
    """The fields both probe-assist routes share: ``port``, ``timeout_ms``, ``token``."""
    _check_fields(obj, {"port"}, {"timeout_ms", "token"} | optional, where)
    port = port_field(obj["port"], "port")
    timeout_ms = int(number_field(obj.get("timeout_ms", DEFAULT_TIMEOUT_MS), "timeout_ms", MIN_TIMEOUT_MS,
                                  MAX_TIMEOUT_MS))
    token = bytes.fromhex(hex_field(obj.get("token", ""), "token", 0, 2 * MAX_TOKEN))
    return port, timeout_ms, token


def sources_field(value) -> tuple[str, ...]:
    """Probe-assist's ``from``: a non-empty list of distinct :data:`ASSIST_SOURCES`."""
    if (not isinstance(value, list) or not value or len(value) > len(ASSIST_SOURCES)
            or any(s not in ASSIST_SOURCES for s in value) or len(set(value)) != len(value)):
        raise BadRequest(f"from must be a non-empty list of distinct values from {list(ASSIST_SOURCES)}")
    return tuple(value)


def connect_back_request(obj: dict) -> ConnectBackRequest:
    """Validate a decoded ``POST /v1/probe/tcp-connect`` body
    ``{"port", "from"?, "attempts"?, "timeout_ms"?, "token"?}``."""
    port, timeout_ms, token = _assist_fields(obj, "tcp-connect", {"from", "attempts"})
    return ConnectBackRequest(port, sources_field(obj.get("from", list(ASSIST_SOURCES))),
                              int_field(obj.get("attempts", DEFAULT_ATTEMPTS), "attempts", 1, MAX_ATTEMPTS),
                              timeout_ms, token)


def simopen_request(obj: dict) -> SimopenRequest:
    """Validate a decoded ``POST /v1/probe/tcp-simopen`` body
    ``{"port", "delay_ms"?, "timeout_ms"?, "token"?}``."""
    port, timeout_ms, token = _assist_fields(obj, "tcp-simopen", {"delay_ms"})
    delay_ms = int(number_field(obj.get("delay_ms", DEFAULT_DELAY_MS), "delay_ms", 0, MAX_DELAY_MS))
    return SimopenRequest(port, delay_ms, timeout_ms, token)


def exchange_request(obj: dict) -> ExchangeRequest:
    """Validate a decoded ``POST /v1/relay`` body
    ``{"match_id", "token", "relayed"?, "transport"?}`` (transport "udp", the default, or "tcp")."""
    _check_fields(obj, {"match_id", "token"}, {"relayed", "transport"}, "relay exchange")
    match_id = _of_kind(obj["match_id"], str, "match_id", MATCH_ID_MAX)
    token = _of_kind(obj["token"], str, "token", TOKEN_MAX)
    relayed = obj.get("relayed")
    if relayed is not None:
        ep = endpoint(relayed, "relayed")
        relayed = (ep["ip"], ep["port"])
    transport = transport_field(obj.get("transport", "udp"))
    return ExchangeRequest(match_id, token, relayed, transport)
