"""Small helpers shared by the CLI commands (output formatting only)."""

from __future__ import annotations

import json

import click


def emit_json(obj) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(obj, sort_keys=True))


def progress(message: str) -> None:
    """Progress for long work goes to stderr so stdout stays clean for --json."""
    click.echo(message, err=True)



def tls_options(command):
    """``--ca-file`` and ``--insecure``: how an https:// signaling server is verified."""
    command = click.option("--insecure", is_flag=True,
                           help="Do not verify the https:// server's certificate (warns: anyone on "
                                "the path can then pose as the server).")(command)
    return click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
                        help="PEM CA certificates to verify an https:// server with "
                             "[default: the system trust store].")(command)


def tls_settings(ca_file: str | None, insecure: bool):
    """The :class:`~stunturn_diag.signaling.TlsOptions` of the options; warns on stderr for --insecure."""
    from ..signaling import TlsOptions

    if insecure and ca_file:
        raise click.UsageError("--insecure and --ca-file exclude each other")
    if insecure:
        click.echo("warning: --insecure: the server's TLS certificate is not verified; an attacker "
                   "on the path can impersonate it and read the rendezvous identifier and your "
                   "addresses", err=True)
    return TlsOptions(ca_file=ca_file, insecure=insecure)
