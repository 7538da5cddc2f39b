"""`stunturn-diag probe`: diagnose this host's NAT (RFC 4787 / RFC 5382 / RFC 5780).

Exit status: 0 diagnosed, 3 partially diagnosed (some verdicts undetermined),
4 could not reach the server (HTTP down, no STUN answer, no route); 1 bad input, 2 usage error.
"""

from __future__ import annotations

import sys

import click

from ._common import emit_json, progress, tls_options, tls_settings


@click.command("probe", epilog="Exit status: 0 diagnosed, 3 partially diagnosed (see 'undetermined'), "
                                "4 could not reach the server, 1 error, 2 usage error.")
@click.argument("server", required=False)
@click.option("--stun", "stun", metavar="HOST:PORT",
              help="Use any RFC 5780 STUN server (e.g. coturn) instead of our server; UDP tests only.")
@click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON document.")
@click.option("--no-tcp", is_flag=True, help="Skip the TCP tests.")
@click.option("--lifetime", type=click.FloatRange(1, 1200), default=None, metavar="SECONDS",
              help="Also measure the UDP binding lifetime, probing up to SECONDS in parallel.")
@click.option("--pcap", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the probe's packets to this pcap file (root).")
@click.option("--no-port-mapping", is_flag=True,
              help="Do not ask the gateway for PCP / NAT-PMP / UPnP IGD port mapping.")
@click.option("--no-ipv6", is_flag=True,
              help="Diagnose only the server URL's IP family (default: IPv6 too, at the same time, "
                   "when the server has IPv6 addresses and this host a route to them).")
@tls_options
def command(server: str | None, stun: str | None, as_json: bool, no_tcp: bool, lifetime: float | None,
            pcap: str | None, no_port_mapping: bool, no_ipv6: bool, ca_file: str | None,
            insecure: bool) -> None:
    """Diagnose NAT behaviour against SERVER (http://HOST:PORT of `stunturn-diag serve`)
    or --stun HOST:PORT."""
    from ..probe.dual_stack import run_dual_stack
    from stunturn_diag.sansio.probe.report import render

    if (server is None) == (stun is None):
        raise click.UsageError("give a SERVER URL or --stun HOST:PORT (exactly one)")
    if lifetime:
        progress(f"measuring binding lifetime: this takes up to {lifetime:g} s")
    tls = tls_settings(ca_file, insecure)
    result = run_dual_stack(server, stun=stun, ipv6=not no_ipv6, tcp=not no_tcp, lifetime=lifetime,
                            pcap=pcap, progress=None if as_json else progress,
                            port_mapping=not no_port_mapping, tls=tls)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(render(result))
    sys.exit(result.exit_code)
