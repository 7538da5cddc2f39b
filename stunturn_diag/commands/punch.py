"""`stunturn-diag punch`: pair through the server, punch, authenticate, then relay.

Initiator: ``punch URL --key-file FILE --target-ip RECEIVER_IP [--protocol udp|tcp]``.
Receiver:  ``punch URL --key-file FILE [--wait SECONDS]``.
The key comes from ``--key-file``, ``STUNTURN_KEY`` or (warned: visible in ``ps``)
``--key``; ``punch --generate-key`` prints a fresh one. A thin layer over
:mod:`stunturn_diag.punch.api`, :mod:`stunturn_diag.sansio.punch.keys` and
:mod:`stunturn_diag.punch.relay`.
"""

from __future__ import annotations

import json
import secrets
import sys

import click
from click.core import ParameterSource

from ..errors import ConfigError, PunchError, StunturnError
from ._common import emit_json, progress, tls_options, tls_settings


def _load_profile(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the NAT profile {path}: {exc}",
                          hint="pass the output of `stunturn-diag probe --json`") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the NAT profile {path} is not a JSON object")
    return data


def _generate_key(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from stunturn_diag.sansio.punch.keys import generate_key

    click.echo(generate_key(secrets.token_bytes))
    ctx.exit(0)


def _read_key_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(4096)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc}",
                          hint="create it with `stunturn-diag punch --generate-key > FILE`") from None
    key = text.strip("\r\n")
    if not key or "\n" in key:
        raise ConfigError(f"the key file {path} must hold the key on one line",
                          hint="create it with `stunturn-diag punch --generate-key > FILE`")
    return key


def resolve_key(ctx: click.Context, key: str | None, key_file: str | None,
                say) -> str:
    """The access key from --key-file, STUNTURN_KEY or --key; warnings go to ``say``."""
    from stunturn_diag.sansio.punch.keys import key_warnings

    if key_file and key and ctx.get_parameter_source("key") is ParameterSource.COMMANDLINE:
        raise click.UsageError("--key and --key-file exclude each other")
    if key_file:
        key = _read_key_file(key_file)
    elif not key:
        raise click.UsageError("no access key: pass --key-file FILE or set STUNTURN_KEY "
                               "(create one with --generate-key)")
    elif ctx.get_parameter_source("key") is ParameterSource.COMMANDLINE:
        say("warning: --key shows the access key in the process list (ps); "
            "prefer --key-file or STUNTURN_KEY")
    for warning in key_warnings(key):
        say(f"warning: {warning}")
    return key


def _failure(exc: StunturnError) -> dict:
    out = {"ok": False, "reason": getattr(exc, "reason", None) or exc.code,
           "error": exc.code, "message": str(exc)}
    if isinstance(exc, PunchError):
        out["attempts"] = exc.attempts
        out.update(getattr(exc, "context", {}) or {})
    return out


@click.command("punch")
@click.argument("server_url")
@click.option("--generate-key", is_flag=True, is_eager=True, expose_value=False,
              callback=_generate_key,
              help="Print a fresh 128-bit access key (base32) and exit.")
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="Read the shared access key from this file (first line).")
@click.option("--key", envvar="STUNTURN_KEY", show_envvar=True,
              help="Shared access key (8-256 chars). On the command line it shows in ps: "
                   "prefer --key-file or the env var.")
@click.option("--target-ip", help="Initiator: the receiver's public IP (omit to be the receiver).")
@click.option("--protocol", type=click.Choice(["udp", "tcp"]), default=None,
              help="Initiator: what to punch (default udp). Receiver: prepare only this one.")
@click.option("--wait", "wait", type=float, default=0.0, show_default=True,
              help="Receiver: keep checking in this many seconds until an initiator waits.")
@click.option("--wait-interval", type=float, default=1.0, show_default=True,
              help="Receiver: seconds between check-ins while waiting.")
@click.option("--timeout", "pair_timeout", type=float, default=None,
              help="Initiator: seconds to wait for the receiver (default: the server's limit; "
                   "longer re-issues the long-poll).")
@click.option("--punch-timeout", type=float, default=10.0, show_default=True,
              help="Seconds from the match to an authenticated connection.")
@click.option("--stun-timeout", type=float, default=3.0, show_default=True,
              help="Seconds to learn the server-reflexive address.")
@click.option("--forward", "forward_to", metavar="HOST:PORT",
              help="Connect the punched channel to this local service.")
@click.option("--listen", "listen_on", metavar="HOST:PORT",
              help="Accept a local client here and carry it through the punched channel.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON result line and exit after the authenticated handshake.")
@click.option("--nat-profile", type=click.Path(dir_okay=False),
              help="Our NAT profile (`probe --json` output) to share with the peer.")
@click.option("--probe/--no-probe", "probe", default=True, show_default=True,
              help="Without --nat-profile: know our NAT (a recent cached probe, else the quick "
                   "probe, ~0.2-0.5 s) and share it; --no-probe punches without a profile.")
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Probe again instead of reusing this network's profile from the last 10 "
                   "minutes, and do not store it.")
@click.option("--birthday", is_flag=True,
              help="Allow the bounded many-ports attempt (both sides must allow it).")
@click.option("--prime-ttl", type=click.IntRange(0, 255), default=2, show_default=True,
              help="TTL of the priming packets (0 disables priming).")
@click.option("--bind", "bind", metavar="IP[:PORT]", default="0.0.0.0",
              help="Local address/port to punch from.")
@click.option("--peer-timeout", type=float, default=10.0, show_default=True,
              help="UDP: seconds of silence after which the peer counts as lost.")
@click.option("--relay/--no-relay", "use_relay", default=True, show_default=True,
              help="Fall back to the server's TURN relay (serve --turn-server; for TCP "
                   "--turn-transports tcp) when the plan needs one or the direct attempt "
                   "fails by --punch-timeout.")
@click.option("--relay-timeout", type=float, default=5.0, show_default=True,
              help="Seconds the relayed handshake may take once the fallback starts.")
@click.option("--ipv6/--no-ipv6", "ipv6", default=True, show_default=True,
              help="UDP through a dual-stack server's IPv4 URL: punch over IPv6 too (with a "
                   "head start, RFC 8305) and keep the first authenticated path.")
@click.option("--happy-eyeballs-delay", type=click.FloatRange(0, 2), default=0.05,
              show_default=True, help="Seconds the IPv6 attempt starts before the IPv4 one.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
@tls_options
@click.pass_context
def command(ctx, server_url, key_file, key, target_ip, protocol, wait, wait_interval, pair_timeout,
            punch_timeout, stun_timeout, forward_to, listen_on, as_json, nat_profile, probe, no_cache,
            birthday, prime_ttl, bind, peer_timeout, use_relay, relay_timeout, ipv6, happy_eyeballs_delay,
            quiet, ca_file, insecure) -> None:
    """Punch a direct, authenticated UDP/TCP connection to a peer paired via SERVER_URL."""
    from ..punch import api, relay

    if sum(bool(x) for x in (forward_to, listen_on, as_json)) > 1:
        raise click.UsageError("--forward, --listen and --json exclude each other")
    if wait and target_ip:
        raise click.UsageError("--wait is for the receiver (no --target-ip)")
    forward_addr = relay.parse_hostport(forward_to, "--forward") if forward_to else None
    listen_addr = relay.parse_hostport(listen_on, "--listen") if listen_on else None
    local_ip, local_port = relay.parse_bind(bind)
    say = (lambda m: None) if quiet else progress
    key = resolve_key(ctx, key, key_file, progress)
    tls = tls_settings(ca_file, insecure)
    try:
        opts = api.PunchOptions(
            protocol=protocol or "udp", pair_timeout=pair_timeout, punch_timeout=punch_timeout,
            stun_timeout=stun_timeout, wait=wait, wait_interval=wait_interval,
            prime_ttl=prime_ttl or None, birthday=birthday, nat_profile=_load_profile(nat_profile),
            probe=probe, cache=not no_cache,
            local_ip=local_ip, local_port=local_port,
            peer_timeout=peer_timeout, relay=use_relay, relay_timeout=relay_timeout,
            progress=say, tls=tls, ipv6=ipv6, happy_eyeballs_delay=happy_eyeballs_delay)
        if target_ip:
            result = api.initiate(server_url, key, target_ip, protocol=opts.protocol, options=opts)
        else:
            result = api.receive(server_url, key, protocol=protocol, options=opts)
    except StunturnError as exc:
        if as_json:
            emit_json(_failure(exc))
            sys.exit(1)
        raise
    if as_json:
        emit_json(result.as_dict())
        result.close()
        return
    peer = f"{result.peer[0]}:{result.peer[1]}"
    peer = f"[{result.peer[0]}]:{result.peer[1]}" if result.family == 6 else peer
    say(f"connected to {peer} over {result.protocol} ({result.strategy}, "
        f"IPv{result.family}, {result.connect_ms:.0f} ms after the match); authenticated"
        + (f"; relayed because {result.relay_reason}" if result.relay else ""))
    try:
        if forward_addr:
            say(f"forwarding to {forward_addr[0]}:{forward_addr[1]}")
            relay.forward(result.connection, forward_addr)
        elif listen_addr:
            relay.listen(result.connection, listen_addr,
                         ready=lambda a: say(f"listening on {a[0]}:{a[1]}"))
        else:
            relay.relay_stdio(result.connection)
    finally:
        result.close()
