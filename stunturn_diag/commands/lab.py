"""`stunturn-diag lab`: real kernel NAT topologies in network namespaces (root).

Subcommands: up, down, exec, status, catalogue, demo. Thin: each calls one function
of :mod:`stunturn_diag.lab` and formats its result.
"""

from __future__ import annotations

import sys

import click

from ._common import emit_json, progress


@click.group("lab")
def command() -> None:
    """NAT lab: sites behind real kernel NATs (nftables) in network namespaces."""


def _sites(site_a: str | None, site_b: str | None, same_nat: bool) -> tuple[str, str | None]:
    """Catalogue names of sites a and b from the options (b is None with --same-nat)."""
    if same_nat and site_b is not None:
        raise click.UsageError("--same-nat puts both peers behind site a's NAT; drop --site-b")
    return site_a or "port-restricted", None if same_nat else site_b or "full-cone"


def _site_options(func):
    """--site-a/--site-b/--cgnat/--same-nat of `lab up`, `lab demo` and `lab run`."""
    options = [
        click.option("--site-a", default=None, show_default="port-restricted", metavar="TYPE",
                     help="NAT of site a: a catalogue name (see `lab catalogue`), optionally "
                          "TYPE+flag+key=value (e.g. port-restricted+hairpin, full-cone+loss=5; "
                          "+portmap, +pcp or +upnp run miniupnpd on its NAT box)."),
        click.option("--site-b", default=None, show_default="full-cone", metavar="TYPE",
                     help="NAT of site b."),
        click.option("--cgnat", multiple=True, metavar="SITE",
                     help="Put a carrier-grade NAT (100.64.0.0/10) in front of this site."),
        click.option("--same-nat", is_flag=True,
                     help="Two hosts (a1, a2) behind site a's NAT, no site b."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@command.command("up")
@_site_options
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False),
              help="Read the lab from a JSON or TOML spec instead.")
@click.option("--json", "as_json", is_flag=True)
def up_cmd(site_a, site_b, cgnat, same_nat, spec_file, as_json) -> None:
    """Build a lab that stays up until `lab down NAME`."""
    from ..lab import LabSpec, manage
    from ..lab.files import load_spec

    if spec_file and (site_a or site_b or cgnat or same_nat):
        raise click.UsageError("--spec describes the whole lab; drop --site-a/--site-b/"
                               "--cgnat/--same-nat")
    site_a, site_b = _sites(site_a, site_b, same_nat)
    spec = (load_spec(spec_file) if spec_file else
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
@click.option("--mine", is_flag=True,
              help="With --all: only labs of your own `lab run`/`lab matrix` runs whose "
                   "runner is gone (never a live run's, another user's or a `lab up` lab).")
@click.option("--json", "as_json", is_flag=True)
def down_cmd(name, all_, mine, as_json) -> None:
    """Tear down lab NAME, or every lab with --all."""
    from ..lab import down, down_all
    from ..lab.ci.owner import down_mine

    if mine and not all_:
        raise click.UsageError("--mine goes with --all")
    if bool(name) == all_:
        raise click.UsageError("give a lab NAME or --all (exactly one)")
    gone = (down_mine() if mine else down_all()) if all_ else down(name)
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
@_site_options
@click.option("--protocol", type=click.Choice(["udp", "tcp"]), default="udp", show_default=True)
@click.option("--paths", is_flag=True,
              help="Also three quick labs: a direct pair, one through a gateway port mapping "
                   "and one only the TURN relay connects.")
@click.option("--relay/--no-relay", "relay", default=True, show_default=True,
              help="Run coturn on the server host (when installed) and offer it to the peers.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def demo_cmd(site_a, site_b, protocol, cgnat, same_nat, paths, relay, as_json) -> None:
    """Server + probe from each site + a punch from site a to site b that carries a
    message each way, in a fresh lab that is torn down afterwards (exit 0: all worked)."""
    from ..lab.demo import render, run_demo

    site_a, site_b = _sites(site_a, site_b, same_nat)
    report = run_demo(site_a, site_b, protocol=protocol, cgnat=tuple(cgnat),
                      same_nat=same_nat, paths=paths, relay=relay,
                      progress=progress)
    if as_json:
        emit_json(report)
    else:
        click.echo(render(report))
    sys.exit(0 if report["ok"] else 1)


def _program_options(func):
    """Options shared by `lab run` and `lab matrix`: the commands, limits, impairments."""
    options = [
        click.option("--server", "server", metavar="CMD",
                     help="Shell command run on the server host first (placeholders: "
                          "{server_ip} {alt_ip} {a_public_ip} {b_public_ip} {key} {type_a} "
                          "{type_b} {logdir}).",),
        click.option("--server-ready", metavar="FORM",
                     help="Wait for the server before the peers: none, line (its first "
                          "output line), tcp:PORT or udp:PORT (a socket listens).  [default: none]"),
        click.option("--a", "a", metavar="CMD",
                     help="Shell command of peer a (on a1); also {peer_public_ip}."),
        click.option("--b", "b", metavar="CMD",
                     help="Shell command of peer b (on b1, or a2 with --same-nat)."),
        click.option("--timeout", type=float, metavar="S",
                     help="Seconds for the server to be ready and both peers to exit.  [default: 60]"),
        click.option("--proto", "protocol", type=click.Choice(["udp", "tcp"]),
                     help="The program's transport: whose theory sets expectations.  [default: udp]"),
        click.option("--loss", type=click.IntRange(0, 100), metavar="PCT",
                     help="Drop this share of forwarded packets each way on every site NAT."),
        click.option("--udp-timeout", type=click.IntRange(1, 86400), metavar="S",
                     help="UDP mapping lifetime of every site NAT."),
        click.option("--delay", type=click.FloatRange(0, 60000), metavar="MS",
                     help="Added delay on each site's internet link, each way (needs sch_netem)."),
        click.option("--jitter", type=click.FloatRange(0, 60000), metavar="MS",
                     help="Jitter of that delay (needs sch_netem)."),
        click.option("--relay", is_flag=True, default=None,
                     help="Run coturn on the server host ({turn_server}, {turn_secret}, "
                          "{turn_realm} for the server command): every pair whose sites can "
                          "use the protocol must connect, over the path the theory names "
                          "(direct / portmap / relay), checked where the peers print our "
                          "punch's JSON result."),
        click.option("--logdir", default="stunturn-lab-logs", show_default=True,
                     type=click.Path(file_okay=False),
                     help="Folder for per-pair logs (PAIR/{server,a,b}.{out,err}, result.json) "
                          "and results.md / results.jsonl."),
        click.option("--junit", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Also write JUnit XML (one test case per pair, logs attached)."),
        click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _program(server, server_ready, a, b, timeout, protocol, loss, udp_timeout, delay,
             jitter, relay) -> dict:
    return {"server": server, "server_ready": server_ready, "a": a, "b": b, "relay": relay,
            "timeout": timeout, "protocol": protocol, "loss": loss,
            "udp_timeout": udp_timeout, "delay": delay, "jitter": jitter}


@command.command("run")
@_site_options
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False),
              help="The lab from a JSON/TOML lab spec (two sites, or one with hosts = 2).")
@click.option("--expect", type=click.Choice(["pass", "fail", "theory"]), default="pass",
              show_default=True, help="pass: both peers must exit 0; fail: they must not.")
@_program_options
def run_cmd(site_a, site_b, cgnat, same_nat, spec_file, expect, as_json, logdir, junit,
            **program) -> None:
    """Run your server and two peers through one NAT pair (exit 0: as expected)."""
    from ..lab.ci.runner import load_plan, run_matrix
    from ..lab.ci.report import render_run
    from stunturn_diag.lab.files import read_file

    if spec_file and (site_a or site_b or cgnat or same_nat):
        raise click.UsageError("--spec describes the whole lab; drop --site-a/--site-b/"
                               "--cgnat/--same-nat")
    options = _program(**program) | {"expect": expect}
    if spec_file:
        options["pairs"] = [{"sites": read_file(spec_file, "lab spec").get("sites")}]
    else:
        site_a, site_b = _sites(site_a, site_b, same_nat)
        options["pairs"] = [{"sites": _pair_sites(site_a, site_b, cgnat, same_nat)}]
    outcome = run_matrix(load_plan(None, options), logdir=logdir, junit=junit,
                         progress=progress)
    res = outcome["results"][0]
    if as_json:
        emit_json(res)
    else:
        click.echo(render_run(res))
    sys.exit(0 if outcome["summary"]["ok"] else 1)


def _pair_sites(site_a: str, site_b: str | None, cgnat, same_nat: bool) -> dict:
    sites = {"a": {"nat": site_a, "hosts": 2 if same_nat else 1}}
    if site_b is not None:
        sites["b"] = {"nat": site_b}
    for name in cgnat:
        if name not in sites:
            raise click.UsageError(f"--cgnat {name}: no such site ({', '.join(sites)})")
        sites[name]["cgnat"] = True
    return sites


@command.command("matrix")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False),
              help="A committed test plan (TOML/JSON): types, pairs, expectations, commands; "
                   "options given here win.")
@click.option("--types", metavar="T1,T2,...",
              help="NAT types to pair (TYPE+flag syntax as for `lab run --site-a`).")
@click.option("--all", "all_", is_flag=True, default=None, help="Every catalogue type.")
@click.option("--ordered", is_flag=True, default=None,
              help="Every (A, B) order, not only A <= B.")
@click.option("--cgnat", multiple=True, metavar="SITE",
              help="A carrier-grade NAT in front of this site of every pair.")
@click.option("--same-nat", is_flag=True, default=None,
              help="Also run both peers behind one NAT of each type.")
@click.option("--expect", type=click.Choice(["theory", "pass", "fail"]),
              help="theory: pairs that can be punched must connect, the others are "
                   "skipped test cases.  [default: theory]")
@click.option("--expect-pair", multiple=True, metavar="PAIR=EXPECT",
              help="Expectation of one pair (pass, fail, skip, theory), e.g. "
                   "port-restricted--port-restricted=fail.")
@click.option("--jobs", type=click.IntRange(1, 16), help="Pairs at a time.  [default: 1]")
@_program_options
def matrix_cmd(plan_file, types, all_, ordered, cgnat, same_nat, expect, expect_pair, jobs,
               as_json, logdir, junit, **program) -> None:
    """Run your server and two peers over every (A, B) pair of NAT types (exit 0: every
    expected pair passed). Writes a Markdown table, JSON lines and optionally JUnit XML."""
    from ..lab.ci.report import json_lines
    from ..lab.ci.runner import load_plan, run_matrix

    expectations = {}
    for item in expect_pair:
        pid, eq, value = item.partition("=")
        if not eq:
            raise click.UsageError(f"--expect-pair {item!r}: write PAIR=pass|fail|skip|theory")
        expectations[pid] = value
    options = _program(**program) | {
        "types": types, "all": all_, "ordered": ordered, "cgnat": list(cgnat) or None,
        "same_nat": same_nat, "expect": expect, "jobs": jobs,
        "expectations": expectations or None}
    outcome = run_matrix(load_plan(plan_file, options), logdir=logdir, junit=junit,
                         progress=progress)
    if as_json:
        click.echo(json_lines(outcome["results"]), nl=False)
    else:
        click.echo(open(outcome["files"]["markdown"]).read(), nl=False)
    for kind, path in outcome["files"].items():
        progress(f"{kind}: {path}")
    sys.exit(0 if outcome["summary"]["ok"] else 1)
