"""`stunturn-diag punch` (not built yet)."""

import click

from ._common import not_built


@click.command("punch", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Not built yet."""
    not_built("punch")
