"""The thin click CLI: each command calls one library function and formats its result.

Commands live in ``stunturn_diag/commands/`` (one file each). This module is the
only place that turns ``StunturnError``s into ``click.ClickException``s: the
group's ``invoke`` catches them for every command, so no traceback reaches a user.
"""

from __future__ import annotations

import click

from . import __version__
from .errors import StunturnError


class DomainErrorGroup(click.Group):
    """A click group that reports library errors as clean CLI errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StunturnError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None


@click.group(cls=DomainErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stunturn-diag")
def main() -> None:
    """Diagnose NAT behaviour and punch direct UDP/TCP connections between peers."""


def _register() -> None:
    from .commands import lab, probe, punch, serve

    for module in (probe, punch, serve, lab):
        main.add_command(module.command)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
