"""Every external program the code and the tests run is listed in stunturn_diag/sysdeps.py
with its Debian package, scripts/setup.sh installs exactly those packages, and after
setup.sh each program is on PATH. A program the code starts to run without listing it,
or a listed one missing from this machine, fails here (not later, in some lab test)."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from stunturn_diag import sysdeps

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCANNED = ("stunturn_diag", "server", "stunturn_testkit", "tests", "netns_tests", "benchmarks")
#: calls taking an argv list (subprocess, the lab's exec/popen/command, plan steps, test and benchmark
#: helpers such as _run / _timed / _cli): by name
ARGV_CALL = re.compile(r"(run|popen|check_output|check_call|^call$|exec|command|^Step$|timed|cli|spawn)",
                       re.I)
#: calls that look a program up by name
WHICH_CALLS = {"which", "require_tool"}
#: argv lists that start with a program name held in a variable: the prefix lists themselves
PREFIX_NAME = re.compile(r"(PREFIX|AS_NOBODY|ROOT_WITHOUT_CAPS|drop)$")
#: first elements that are not programs (our own CLI's subcommands and nettool's, built up as args)
NOT_PROGRAMS = {"lab", "probe", "serve", "punch", "udp", "tcp", "alloc", "hairpin", "count", "poke"}


def _argv_head(node: ast.AST) -> str | None:
    if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Constant) \
            and isinstance(node.elts[0].value, str):
        return node.elts[0].value
    return None


def programs_in(tree: ast.AST) -> set[str]:
    """Program names the code runs: argv lists given to a process-starting call,
    ``shutil.which("x")``, and argv prefix lists kept in variables."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in WHICH_CALLS and node.args and isinstance(node.args[0], ast.Constant):
                found.add(node.args[0].value)
            elif name and ARGV_CALL.search(name):
                for arg in node.args[:2]:  # lab.exec(node, argv) / subprocess.run(argv)
                    head = _argv_head(arg)
                    if head is not None:
                        found.add(head)
        elif isinstance(node, ast.Assign):
            targets = [getattr(t, "id", None) or getattr(t, "attr", None) for t in node.targets]
            values = [node.value.body, node.value.orelse] if isinstance(node.value, ast.IfExp) else [node.value]
            if any(t and PREFIX_NAME.search(t) for t in targets):
                found |= {h for h in map(_argv_head, values) if h is not None}
    return {p for p in found if p not in NOT_PROGRAMS and not p.startswith(("-", "/"))
            and re.fullmatch(r"[A-Za-z0-9_.+-]+", p)}


def used_programs() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for prog in programs_in(ast.parse(path.read_text(), str(path))):
                out.setdefault(prog, []).append(str(path.relative_to(ROOT)))
    return out


def setup_sh_pairs() -> set[tuple[str, str]]:
    """setup.sh's APT_PACKAGES=( package:command ... ) entries (command "" for none)."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    m = re.search(r"^APT_PACKAGES=\(\n(.*?)^\)", text, re.M | re.S)
    assert m, "scripts/setup.sh has no APT_PACKAGES=( package:command ... ) list"
    return {tuple(entry.split(":", 1)) for entry in m.group(1).split()}


def test_the_scan_finds_programs_run_in_every_way():
    tree = ast.parse("import subprocess, shutil\n"
                     "subprocess.run(['nft', '-f', '-'])\n"
                     "lab.exec('srv', ['turnserver', '-n'])\n"
                     "shutil.which('stun')\n"
                     "UNPRIVILEGED_PREFIX = ['setpriv', '--reuid=65534']\n"
                     "drop = ['setpriv', '--bounding-set', '-net_admin'] if x else []\n"
                     "args = ['udp', '--ask', 'x']\n"
                     "Step(['ip', 'netns', 'add', name])\n"
                     "tool = require_tool('turnutils_stunclient')\n"
                     "w, r = _timed(lab, ['turnutils_natdiscovery', '-m'])\n"
                     "Verdict(None, why, ['tcp.assist'])\n")
    assert programs_in(tree) == {"nft", "turnserver", "stun", "setpriv", "ip", "turnutils_stunclient",
                                 "turnutils_natdiscovery"}


def test_every_program_the_code_runs_is_listed():
    listed = {t.command for t in sysdeps.TOOLS}
    unlisted = {p: where for p, where in used_programs().items() if p not in listed}
    assert unlisted == {}, ("add these programs (with their Debian package) to stunturn_diag/sysdeps.py "
                            f"and scripts/setup.sh: {unlisted}")


def test_setup_sh_installs_exactly_the_listed_packages():
    expected = {(t.package, t.command) for t in sysdeps.TOOLS if not t.essential and t.source == "apt"}
    pairs = setup_sh_pairs()
    assert {p for p in pairs if p[1]} == expected
    assert {pkg for pkg, cmd in pairs if not cmd} == set(sysdeps.SETUP_PACKAGES)
    assert sorted({pkg for pkg, _ in pairs}) == sysdeps.apt_packages()
    assert not re.search(r"^\s*libpcap", (ROOT / "scripts" / "setup.sh").read_text(), re.M)


def test_pip_programs_come_from_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    for t in sysdeps.TOOLS:
        if t.source == "pip":
            assert re.search(rf'"{re.escape(t.package)}[<>=~!]', text), f"{t.package} is not in pyproject.toml"


@pytest.mark.parametrize("tool", sysdeps.TOOLS, ids=lambda t: t.command)
def test_each_listed_program_is_on_path(tool):
    assert tool not in sysdeps.missing(), (f"'{tool.command}' ({tool.used_for}) is not on PATH: "
                                           f"run scripts/setup.sh or apt-get install {tool.package}")


def test_no_shared_library_is_loaded_by_name():
    """ctypes loads nothing (LIBRARIES is empty): any CDLL / find_library use must be listed."""
    loads = []
    for folder in ("stunturn_diag", "server"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            loads += [f"{path.relative_to(ROOT)}: {m}" for m in re.findall(r"(?:CDLL|find_library|LoadLibrary)"
                                                                           r"\(\s*['\"]([^'\"]+)", text)]
    assert sorted(loads) == sorted(sysdeps.LIBRARIES)
    for lib in sysdeps.LIBRARIES:
        import ctypes.util
        assert ctypes.util.find_library(lib), f"shared library {lib} is not installed"
