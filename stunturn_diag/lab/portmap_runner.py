"""Starts the real ``miniupnpd`` (Debian's ``miniupnpd-nftables``) on the NAT box of
every site whose ``NatSpec.portmap`` is set, and the STUN responder its check needs.

Both run through :meth:`Lab.popen`, so the lab ends them by PID at teardown (and the
namespace deletion ends anything left). Their output goes to files, not pipes: a lab
built by ``lab up`` outlives the process that built it. The configuration is written
by :mod:`stunturn_diag.sansio.lab.portmap` (pure) into a temporary directory removed once the
daemon has read it. ``python3 -m stunturn_diag.lab.portmap_runner stun IP PORT
LIFETIME`` is the STUN helper's entry point (:func:`stun_answer`).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import LabError
from . import state
from stunturn_diag.sansio.lab import portmap
from stunturn_diag.sansio.lab.nft import LAN, WAN

MINIUPNPD = "/usr/sbin/miniupnpd"
START_TIMEOUT = 15.0
#: the STUN helper ends by itself after this long (a forgotten `lab up` lab)
STUN_LIFETIME = 7 * 24 * 3600


def _wait_for(proc: subprocess.Popen, log: Path, done, what: str, timeout: float) -> str:
    """Poll ``log`` until ``done(text)``; LabError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if done(text):
            return text
        if proc.poll() is not None:
            raise LabError(f"{what} exited ({proc.returncode}) before it was ready: "
                           f"{text.strip()[-600:]}")
        if time.monotonic() > deadline:
            raise LabError(f"{what} was not ready after {timeout:g}s: {text.strip()[-600:]}")
        time.sleep(0.02)


def start(lab) -> list[str]:
    """Start the mapping services of ``lab``'s sites; returns the sites served."""
    sites = [name for name in lab.sites if lab.spec.sites[name].nat.portmap]
    if not sites:
        return []
    if shutil.which(MINIUPNPD) is None and not Path(MINIUPNPD).exists():
        raise LabError("a +portmap site needs miniupnpd", hint="apt-get install miniupnpd-nftables")
    work = state.new_workdir(lab.name, "portmap")
    try:
        log = work / "stun.log"
        with open(log, "w") as out:
            stun = lab.popen(lab.server, [sys.executable, "-m", "stunturn_diag.lab.portmap_runner",
                                          "stun", lab.server_ip, str(portmap.STUN_PORT),
                                          str(STUN_LIFETIME)],
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait_for(stun, log, lambda t: "ready" in t, "the lab's STUN helper", START_TIMEOUT)
        for name in sites:
            _start_site(lab, name, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sites


def _start_site(lab, name: str, work: Path) -> None:
    site = lab.topology.sites[name]
    nat, node = lab.spec.sites[name].nat, site.nat_node
    lan_net = str(ipaddress.ip_network(f"{site.lan_gateway}/{site.lan_prefixlen}", strict=False))
    lab.exec(node, ["nft", "-f", "-"], input=portmap.ruleset(WAN, site.nat_wan_ip), check=True)
    conf = work / f"{name}.conf"
    behind_cgnat = site.cgnat_node is not None
    conf.write_text(portmap.config(nat.portmap, lan_if=LAN, wan_if=WAN, lan_net=lan_net,
                                   stun_host=None if behind_cgnat else lab.server_ip))
    log = work / f"{name}.log"
    with open(log, "w") as out:
        proc = lab.popen(node, [MINIUPNPD, "-d", "-f", str(conf),
                                "-P", str(work / f"{name}.pid")],
                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _wait_for(proc, log, lambda t: portmap.ready(nat.portmap, t, stun=not behind_cgnat),
              f"miniupnpd on {node}", START_TIMEOUT)


def stun_answer(data: bytes, source: tuple[str, int]) -> bytes | None:
    """The helper's answer to one datagram (pure): a Binding success response with
    XOR-MAPPED-ADDRESS and MAPPED-ADDRESS (RFC 8489 sections 14.1, 14.2) for a Binding
    request, else None. It ignores CHANGE-REQUEST on purpose and always answers from
    the address asked: miniupnpd's check (its ``perform_stun``) asks for all four
    RFC 5780 answers and calls any missing one "restrictive NAT". The NAT box's
    WAN *is* the lab's public edge, but a site with ``input_firewall`` drops answers
    from the server's other address; from the asked address they are replies."""
    from stunturn_diag.sansio.stun import AttrType, MessageClass, Method, StunMessage, decode, encode

    try:
        req = decode(data)
    except ValueError:
        return None
    if req.method != Method.BINDING or req.msg_class != MessageClass.REQUEST or req.classic:
        return None
    return encode(StunMessage(Method.BINDING, MessageClass.SUCCESS, req.transaction_id,
                              [(AttrType.XOR_MAPPED_ADDRESS, source),
                               (AttrType.MAPPED_ADDRESS, source)]))


def _stun_main(ip: str, port: str, lifetime: str) -> int:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, int(port)))
    sock.settimeout(1.0)
    print("ready", flush=True)
    end = time.monotonic() + float(lifetime)
    while time.monotonic() < end:
        try:
            data, source = sock.recvfrom(2048)
        except TimeoutError:
            continue
        answer = stun_answer(data, source)
        if answer is not None:
            sock.sendto(answer, source)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "stun":
        sys.exit(_stun_main(*sys.argv[2:]))
    sys.exit("usage: python3 -m stunturn_diag.lab.portmap_runner stun IP PORT LIFETIME")
