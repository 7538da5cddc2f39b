"""`stunturn-diag serve [HOST:PORT]`: run the signaling server and the STUN responder."""

from __future__ import annotations

import ipaddress

import click

from ..errors import ConfigError
from ..sansio.netaddr import format_hostport, parse_hostport
from ._common import emit_json, progress

DEFAULT_LISTEN = "127.0.0.1:8080"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``HOST`` (port 8080) -> (host, port); port 0
    picks a free port (``--json`` prints the one bound)."""
    try:
        host, port = parse_hostport(text, 8080, allow_zero=True)
    except ValueError as exc:
        raise ConfigError(f"invalid listen address: {exc}",
                          hint="HOST:PORT or [IPV6]:PORT with an IP literal, e.g. 127.0.0.1:8080 "
                               "or [::1]:8080") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"the listen host {host!r} must be an IP address",
                          hint="give a numeric address: 127.0.0.1 (this machine only), 0.0.0.0 (all)"
                          ) from None
    return host, port


def _describe(handle) -> dict:
    return {"http_url": handle.http_url, "stun_endpoints": handle.stun_endpoints,
            "http6_url": handle.http6_url, "stun6_endpoints": handle.stun6_endpoints,
            "wait_timeout": handle.config.wait_timeout, "metrics_url": handle.metrics_url,
            "store": "redis" if handle.config.redis_url else "memory"}


@click.command("serve")
@click.argument("listen", default=DEFAULT_LISTEN, metavar="[HOST:PORT]")
@click.option("--alt-ip", metavar="IP", help="Second IP of this host for RFC 5780 behaviour tests.")
@click.option("--ip6", "ip6", metavar="V6",
              help="Dual stack: this host's IPv6 address beside the IPv4 HOST: HTTP listens on it "
                   "too (same port), and the IPv6 STUN primary is [V6]:--stun-port.")
@click.option("--alt-ip6", metavar="V6", help="Second IPv6 address for the RFC 5780 tests over IPv6.")
@click.option("--stun-port", type=int, default=3478, show_default=True, help="STUN primary port (UDP+TCP).")
@click.option("--alt-port", type=int, default=3479, show_default=True, help="STUN alternate port.")
@click.option("--wait-timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="Longest time an initiator's long-poll is held.")
@click.option("--max-waiters-per-ip", type=click.IntRange(1, 1_000_000), default=256, show_default=True,
              metavar="N", help="Most initiators one IPv4 address (IPv6 /64) may keep waiting; more get 429.")
@click.option("--max-connections-per-ip", type=click.IntRange(1, 1_000_000), default=None, metavar="N",
              help="Most HTTP connections one IPv4 address (IPv6 /64) may hold open; more get 429 and "
                   "are closed.  [default: twice --max-waiters-per-ip, at least 512]")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate chain: serve HTTPS (with --tls-key).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM private key of --tls-cert.")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="CIDR",
              help="A reverse proxy whose Forwarded / X-Forwarded-For headers or PROXY protocol "
                   "header name the client (repeatable). Nobody else is believed.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A Host name probe-assist accepts besides this server's own addresses "
                   "(repeatable; the DNS name clients use, e.g. behind a proxy).")
@click.option("--no-stun", is_flag=True, help="Run only the signaling server, no STUN responder.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True,
              help="Logging threshold; INFO logs one line per pairing event (never the key).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines as text or as one JSON object per line.")
@click.option("--redis", "redis_url", metavar="URL",
              help="Pair through a Redis shared by several instances: redis://HOST:PORT/DB or "
                   "rediss://HOST:PORT/DB (TLS); a password may be in the URL. Default: in memory.")
@click.option("--redis-password-file", metavar="PATH", help="Read the Redis password from this file.")
@click.option("--redis-pool-size", type=click.IntRange(1, 4096), default=64, show_default=True, metavar="N",
              help="Most Redis connections for commands (waiting initiators hold none).")
@click.option("--secret-file", metavar="PATH",
              help="Key-hashing secret (16-64 bytes), identical on every instance sharing a Redis; "
                   "else $STUNTURN_SERVER_SECRET; else random (one instance only).")
@click.option("--metrics-listen", metavar="HOST:PORT",
              help="Serve GET /metrics on this address instead of the main HTTP port.")
@click.option("--json", "as_json", is_flag=True, help="Print where it listens as one JSON line.")
@click.option("--turn-server", metavar="IP:PORT", default=None,
              help="A TURN relay (e.g. coturn with use-auth-secret) offered to matched peers.")
@click.option("--turn-secret", metavar="SECRET", envvar="STUNTURN_TURN_SECRET", default=None,
              help="The relay's static-auth-secret; prefer $STUNTURN_TURN_SECRET (an option "
                   "shows in ps).")
@click.option("--turn-realm", metavar="REALM", default=None, help="The relay's realm (told to peers).")
@click.option("--turn-transports", metavar="LIST", default=None,
              help="What the relay relays: udp (default), tcp (RFC 6062 TCP allocations, "
                   "coturn without no-tcp-relay) or udp,tcp.")
def command(listen: str, alt_ip: str | None, ip6: str | None, alt_ip6: str | None, stun_port: int,
            alt_port: int, wait_timeout: float,
            max_waiters_per_ip: int, max_connections_per_ip: int | None, tls_cert: str | None,
            tls_key: str | None, trusted_proxies: tuple[str, ...], allowed_hosts: tuple[str, ...],
            no_stun: bool, log_level: str,
            log_format: str, redis_url: str | None, redis_password_file: str | None, redis_pool_size: int,
            secret_file: str | None, metrics_listen: str | None, as_json: bool, turn_server: str | None,
            turn_secret: str | None, turn_realm: str | None, turn_transports: str | None) -> None:
    """Run the signaling server (HTTP, default 127.0.0.1:8080) and a STUN responder on the same host.

    Initiators POST /v1/initiate and wait; receivers POST /v1/checkin. Ctrl-C stops.
    """
    from stunturn_server.config import (ProbeAssistConfig, ServerConfig, TlsConfig, TurnConfig,
                                        load_secret, read_password_file)
    from stunturn_server.logs import configure_logging
    from stunturn_server.runner import serve_forever

    host, port = parse_listen(listen)
    configure_logging(log_level, log_format)
    config = ServerConfig(http_host=host, http_port=port, alt_ip=alt_ip, http_host6=ip6, alt_ip6=alt_ip6,
                          stun_port=stun_port,
                          alt_port=alt_port, wait_timeout=wait_timeout, stun_enabled=not no_stun,
                          max_waiters_per_ip=max_waiters_per_ip,
                          max_connections_per_ip=max_connections_per_ip or max(512, 2 * max_waiters_per_ip),
                          log_level=log_level.upper(), log_format=log_format, redis_url=redis_url,
                          redis_password=read_password_file(redis_password_file) if redis_password_file
                          else None, redis_pool_size=redis_pool_size, key_secret=load_secret(secret_file),
                          metrics_listen=parse_listen(metrics_listen) if metrics_listen else None,
                          tls=TlsConfig(cert=tls_cert, key=tls_key), trusted_proxies=trusted_proxies,
                          probe_assist=ProbeAssistConfig(allowed_hosts=allowed_hosts),
                          turn=TurnConfig(server=turn_server, secret=turn_secret, realm=turn_realm,
                                          transports=turn_transports or ("udp",)))

    def ready(handle) -> None:
        if as_json:
            emit_json(_describe(handle))
            return
        click.echo(f"signaling server: {handle.http_url}  (long-poll wait up to {wait_timeout:g}s)")
        if handle.http6_url:
            click.echo(f"signaling server: {handle.http6_url}  (IPv6)")
        for ep in handle.stun_endpoints + handle.stun6_endpoints:  # each answers on UDP and TCP
            click.echo(f"STUN {ep['role']:9} {'udp+tcp':8} {format_hostport(ep['ip'], ep['port'])}")
        if no_stun:
            click.echo("STUN responder: disabled (--no-stun)")
        elif not alt_ip:
            click.echo("no --alt-ip: RFC 5780 behaviour tests are unavailable to probes")
        if ip6 and not alt_ip6 and not no_stun:
            click.echo("no --alt-ip6: RFC 5780 behaviour tests over IPv6 are unavailable to probes")
        click.echo(f"match store: {'Redis (shared by every instance using it)' if redis_url else 'in memory'}; "
                   f"metrics: {handle.metrics_url or handle.http_url + '/metrics'}")
        progress("press Ctrl-C to stop")

    serve_forever(config, on_ready=ready)
    progress("stopped")
