"""The one exception hierarchy of stunturn-diag.

Every error says what happened and what to do about it. Only ``cli.py`` turns
these into ``click.ClickException``; library users catch ``StunturnError``.
"""

from __future__ import annotations


class StunturnError(Exception):
    """Base class of every error this package raises on purpose."""

    #: stable, machine-readable code (used in ``--json`` output)
    code = "error"
    #: the CLI's exit status for this error
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class StunDecodeError(StunturnError, ValueError):
    """Bytes are not a well-formed STUN message (RFC 8489 section 5/14)."""

    code = "stun-decode"


class StunIntegrityError(StunDecodeError):
    """MESSAGE-INTEGRITY or FINGERPRINT did not verify (RFC 8489 sections 14.5, 14.7)."""

    code = "stun-integrity"


class StunEncodeError(StunturnError, ValueError):
    """A STUN message or attribute value cannot be encoded (RFC 8489 sections 5, 14)."""

    code = "stun-encode"


class ConfigError(StunturnError):
    """A setting or option value is invalid."""

    code = "config"


class PlanError(ConfigError):
    """A ``lab run`` / ``lab matrix`` plan (options or plan file) is invalid: exit 2."""

    code = "plan"
    exit_code = 2


class PrivilegeError(StunturnError):
    """An operation needs root (CAP_NET_ADMIN / CAP_NET_RAW) and we do not have it."""

    code = "privilege"


class SignalingError(StunturnError):
    """Talking to the signaling server failed (unreachable, bad answer, 4xx)."""

    code = "signaling"

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None,
                 error: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.error = error


class ServerUnreachable(SignalingError):
    code = "server-unreachable"


class PairingTimeout(SignalingError):
    """The initiator's long-poll ended without a receiver checking in."""

    code = "timeout"


class NoInitiatorWaiting(SignalingError):
    """A receiver checked in but no initiator waits for this key and this IP."""

    code = "no-initiator"


class PairingConflict(SignalingError):
    """Another initiator already waits for this key and target IP."""

    code = "conflict"


class RateLimited(SignalingError):
    """The server refused for now (429): too many failed attempts from here or for this target."""

    code = "rate-limited"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class SignalingTlsError(ServerUnreachable):
    """The signaling server's TLS certificate did not verify (or TLS failed otherwise)."""

    code = "signaling-tls"


class ProxyHeaderError(StunturnError, ValueError):
    """A trusted proxy sent a malformed PROXY protocol header (the server closes the connection)."""

    code = "proxy-protocol"


class ProbeError(StunturnError):
    """The NAT probe could not run at all (e.g. STUN server unreachable)."""

    code = "probe"


class PunchError(StunturnError):
    """Hole punching failed.

    ``reason`` names the cause, ``attempts`` each attempt's failure, and
    ``context`` what was known when it failed (protocol, role, match id, strategy).
    """

    code = "punch-failed"

    def __init__(self, message: str, *, hint: str | None = None, reason: str = "failed",
                 attempts: list[dict] | None = None, context: dict | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.attempts = attempts or []
        self.context = context or {}


class AuthenticationError(PunchError):
    """The peer did not prove knowledge of the access key."""

    code = "auth-failed"


class LabError(StunturnError):
    """Building, using or tearing down a NAT lab failed."""

    code = "lab"


class LabUnavailable(LabError):
    """``lab run`` / ``lab matrix`` cannot run here (no root, a missing tool or
    capability, no ``sch_netem`` for --delay/--jitter): exit 2, before any lab is built."""

    code = "lab-unavailable"
    exit_code = 2


class PortMapDecodeError(StunturnError, ValueError):
    """Bytes are not a well-formed PCP (RFC 6887) / NAT-PMP (RFC 6886) message, or an
    UPnP IGD answer (SSDP, device description, SOAP) could not be understood."""

    code = "portmap-decode"


class PortMapEncodeError(StunturnError, ValueError):
    """A PCP / NAT-PMP request cannot be encoded (a field out of range)."""

    code = "portmap-encode"


class TurnError(StunturnError):
    """A TURN (RFC 8656) request cannot be made as asked (bad channel number, no
    allocation yet), or ChannelData bytes are malformed. A TURN server's error
    *response* is not raised: the client reports it as an event."""

    code = "turn"


class TurnFramingError(TurnError):
    """Bytes on a stream to a TURN server (TCP, RFC 8656 sections 3.1 and 12.5) start
    neither a STUN message nor ChannelData, or a STUN length is not a multiple of 4:
    the stream is out of step and cannot be resynchronised (close the connection)."""

    code = "turn-framing"


class StoreUnavailable(StunturnError):
    """The shared match store (Redis) cannot be reached or did not answer in time.

    The signaling server answers 503 ``store-unavailable`` while this lasts and resumes
    by itself once the store is back.
    """

    code = "store-unavailable"
