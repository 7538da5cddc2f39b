"""`stunturn-diag serve` (not built yet)."""

import click

from ._common import not_built


@click.command("serve", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Not built yet."""
    not_built("serve")
