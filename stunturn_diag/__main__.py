"""``python3 -m stunturn_diag`` runs the CLI (same as ``stunturn-diag``)."""

from .cli import main

main(prog_name="stunturn-diag")
