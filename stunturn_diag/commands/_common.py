"""Small helpers shared by the CLI commands (output formatting only)."""

from __future__ import annotations

import json
import sys

import click


def emit_json(obj) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(obj, sort_keys=True))


def progress(message: str) -> None:
    """Progress for long work goes to stderr so stdout stays clean for --json."""
    click.echo(message, err=True)


def not_built(name: str) -> None:
    click.echo(f"stunturn-diag {name}: not built yet in this version.", err=True)
    sys.exit(2)
