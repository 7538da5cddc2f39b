"""`stunturn-diag lab`: real kernel NAT topologies in network namespaces (root).

Subcommands: up, down, exec, status, catalogue, demo. Thin: each calls one function
of :mod:`stunturn_diag.lab` and formats its result.
"""

from __future__ import annotations

import sys

import click

from ._common import emit_json, progress


def _nat_names() -> list[str]:
    from ..lab import CATALOGUE
    return list(CATALOGUE)


@click.group("lab")
def command() -> None:
    """NAT lab: sites behind real kernel NATs (nftables) in network namespaces."""


def _sites(site_a: str | None, site_b: str | None, same_nat: bool) -> tuple[str, str | None]:
    """Catalogue names of sites a and b from the options (b is None with --same-nat)."""
    if same_nat and site_b is not None:
        raise click.UsageError("--same-nat puts both peers behind site a's NAT; drop --site-b")
    return site_a or "port-restricted", None if same_nat else site_b or "full-cone"


@command.command("up")
@click.option("--site-a", default=None, show_default="port-restricted", metavar="NAT",
              help="NAT type of site a (see `lab catalogue`).")
@click.option("--site-b", default=None, show_default="full-cone", metavar="NAT",
              help="NAT type of site b.")
@click.option("--cgnat", multiple=True, metavar="SITE",
              help="Put a carrier-grade NAT (100.64.0.0/10) in front of this site.")
@click.option("--same-nat", is_flag=True, help="Two hosts (a1, a2) behind site a's NAT, no site b.")
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False),
              help="Read the lab from a JSON or TOML spec instead.")
@click.option("--json", "as_json", is_flag=True)
def up_cmd(site_a, site_b, cgnat, same_nat, spec_file, as_json) -> None:
    """Build a lab that stays up until `lab down NAME`."""
    from ..lab import LabSpec, manage

    if spec_file and (site_a or site_b or cgnat or same_nat):
        raise click.UsageError("--spec describes the whole lab; drop --site-a/--site-b/"
                               "--cgnat/--same-nat")
    site_a, site_b = _sites(site_a, site_b, same_nat)
    spec = (LabSpec.from_file(spec_file) if spec_file else
            LabSpec.simple(site_a, site_b, cgnat=tuple(cgnat), same_nat=same_nat))
    lab = manage.up(spec)
    info = lab.describe()
    if as_json:
        emit_json(info)
        return
    click.echo(f"lab {info['name']} is up")
    click.echo(f"  server {info['server']['node']}: {info['server']['ip']} "
               f"(alternate {info['server']['alt_ip']})")
    for name, site in info["sites"].items():
        layers = site["nat"] + (f" behind CGNAT {site['cgnat']}" if site["cgnat"] else "")
        hosts = ", ".join(f"{h} {ip}" for h, ip in site["hosts"].items())
        click.echo(f"  site {name}: {layers}, public {site['public_ip']}; hosts {hosts}")
    click.echo(f"  nodes: {' '.join(info['nodes'])}")
    click.echo(f"run things: stunturn-diag lab exec {info['name']} a1 -- CMD ...")
    click.echo(f"tear down:  stunturn-diag lab down {info['name']}")


@command.command("down")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True,
              help="Remove every namespace whose name starts with 'stl-' (crash cleanup).")
@click.option("--json", "as_json", is_flag=True)
def down_cmd(name, all_, as_json) -> None:
    """Tear down lab NAME, or every lab with --all."""
    from ..lab import down, down_all

    if bool(name) == all_:
        raise click.UsageError("give a lab NAME or --all (exactly one)")
    gone = down_all() if all_ else down(name)
    if as_json:
        emit_json({"removed": gone})
    else:
        click.echo(f"removed {len(gone)} namespace(s)" + (": " + " ".join(gone) if gone else ""))


@command.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("node")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(name, node, argv) -> None:
    """Run a command inside NODE of lab NAME: lab exec NAME NODE -- CMD ..."""
    from ..lab import manage

    sys.exit(manage.exec_in(name, node, list(argv)))


@command.command("status")
@click.option("--json", "as_json", is_flag=True)
def status_cmd(as_json) -> None:
    """Labs that are up, and stray lab namespaces."""
    from ..lab import manage

    info = manage.status()
    if as_json:
        emit_json(info)
        return
    if not info["labs"]:
        click.echo("no lab is up")
    for lab in info["labs"]:
        if "error" in lab:
            click.echo(f"{lab['name']}: {lab['error']}")
            continue
        sites = ", ".join(f"{n}={s['nat']}" for n, s in lab["sites"].items())
        click.echo(f"{lab['name']}: {'up' if lab['up'] else 'PARTLY GONE'}; {sites}")
    if info["stray_namespaces"]:
        click.echo("lab namespaces not started by `lab up` (Python API labs, or left by a crash; `lab down --all` removes every one): "
                   + " ".join(info["stray_namespaces"]))


@command.command("catalogue")
@click.option("--json", "as_json", is_flag=True)
def catalogue_cmd(as_json) -> None:
    """The NAT types a site can have, with their ground truth."""
    from ..behaviour import classic_label, Filtering, Mapping
    from ..lab import manage

    entries = manage.catalogue()
    if as_json:
        emit_json({"catalogue": entries})
        return
    for entry in entries:
        udp, tcp = entry["expected"]["udp"], entry["expected"]["tcp"]
        label = classic_label(Mapping(tcp["mapping"]), Filtering(tcp["filtering"]))
        click.echo(f"{entry['name']}  ({label})")
        click.echo(f"    {entry['description']}")
        click.echo(f"    udp: reachable={udp['reachable']} mapping={udp['mapping']} "
                   f"filtering={udp['filtering']} ports={udp['port_allocation']} "
                   f"hairpin={udp['hairpin']} moves-on-unsolicited="
                   f"{udp['mapping_moves_on_unsolicited']}")
        click.echo(f"    tcp: mapping={tcp['mapping']} filtering={tcp['filtering']} "
                   f"unsolicited-syn={tcp['unsolicited_syn']}")


@command.command("demo")
@click.option("--site-a", default=None, show_default="port-restricted", metavar="NAT",
              help="NAT type of site a (see `lab catalogue`).")
@click.option("--site-b", default=None, show_default="full-cone", metavar="NAT",
              help="NAT type of site b.")
@click.option("--protocol", type=click.Choice(["udp", "tcp"]), default="udp", show_default=True)
@click.option("--cgnat", multiple=True, metavar="SITE",
              help="Put a carrier-grade NAT in front of this site.")
@click.option("--same-nat", is_flag=True, help="Both peers (a1, a2) behind site a's NAT.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def demo_cmd(site_a, site_b, protocol, cgnat, same_nat, as_json) -> None:
    """Server + probe from each site + a punch from site a to site b that carries a
    message each way, in a fresh lab that is torn down afterwards (exit 0: all worked)."""
    from ..lab.demo import render, run_demo

    site_a, site_b = _sites(site_a, site_b, same_nat)
    report = run_demo(site_a, site_b, protocol=protocol, cgnat=tuple(cgnat),
                      same_nat=same_nat, progress=progress)
    if as_json:
        emit_json(report)
    else:
        click.echo(render(report))
    sys.exit(0 if report["ok"] else 1)
