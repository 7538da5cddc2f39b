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

