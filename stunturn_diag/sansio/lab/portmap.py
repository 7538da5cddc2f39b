"""A site's port-mapping service: the real ``miniupnpd`` on its NAT box (pure part).

``NatSpec.portmap`` switches it on: ``"all"`` (PCP + NAT-PMP + UPnP IGD), ``"pcp"``
(PCP and NAT-PMP: miniupnpd serves both on UDP 5351 behind one switch,
``enable_natpmp``) or ``"upnp"`` (UPnP IGD only). On the command line a catalogue
name takes a flag (the lab's ``TYPE+flag`` syntax, :func:`stunturn_diag.sansio.lab.spec.
fold_portmap_flags`): ``symmetric-random+portmap``, ``full-cone+pcp``,
``port-restricted+upnp`` (or ``+portmap=upnp``).

This module is pure: the flag parsing, miniupnpd's configuration text, the nftables
skeleton it fills (Debian's package ships ``nft_init.sh`` for that, without the helper
it sources), and the ground truth. :mod:`stunturn_diag.lab.portmap_runner` starts and
stops the daemon.

nftables integration: miniupnpd adds its DNAT rules to chain ``prerouting_miniupnpd``
and its accept rules to chain ``miniupnpd`` of its own table ``inet miniupnpd``
(forward policy *accept*, so it never drops what the lab's table ``ip stunturn_lab``
lets through). The lab's own table drops nothing in forward except for ``udp_blocked``
and ``loss_percent``, its filtering is conntrack's, so a packet DNATed by a mapping
reaches the LAN host; an endpoint-independent NAT's own DNAT (the cone map) sees only
ports the host used itself.

miniupnpd refuses a reserved WAN address (the lab's are RFC 5737 TEST-NET-3) unless a
STUN check (``ext_perform_stun``) shows that nothing filters beyond it: the lab runs
a STUN responder on the server host for that (:data:`STUN_PORT`).
"""

from __future__ import annotations

import uuid as _uuid

from stunturn_diag.errors import ConfigError

MODES = ("all", "pcp", "upnp")
#: command-line flag -> NatSpec.portmap
SUFFIXES = {"portmap": "all", "pcp": "pcp", "upnp": "upnp"}
TABLE = "miniupnpd"
HTTP_PORT = 5000
#: the lab's STUN helper for miniupnpd's check, on the server host's primary IP
STUN_PORT = 3490
MIN_LIFETIME = 60
MAX_LIFETIME = 86400


def check(nat) -> None:
    """ConfigError unless ``nat.portmap`` is one of :data:`MODES` on a translating NAT."""
    if nat.portmap is None:
        return
    if nat.portmap not in MODES:
        raise ConfigError(f"NAT {nat.name!r}: portmap {nat.portmap!r} is not one of: "
                          f"{', '.join(MODES)}")
    if not nat.nat:
        raise ConfigError(f"NAT {nat.name!r}: a port-mapping service needs a NAT",
                          hint="a public site has nothing to map")


def protocols(mode: str | None) -> dict[str, bool]:
    """Which protocols a mode offers (PCP and NAT-PMP go together in miniupnpd)."""
    natpmp = mode in ("all", "pcp")
    return {"pcp": natpmp, "nat_pmp": natpmp, "upnp": mode in ("all", "upnp")}


def expected(nat, outer=None) -> dict:
    """Ground truth of the probe's ``port_mapping`` block for a host behind ``nat``
    (behind the carrier-grade ``outer``, mappings do not reach the host: not usable)."""
    offered = protocols(getattr(nat, "portmap", None))
    return {**offered, "usable": any(offered.values()) and outer is None}


def config(mode: str, *, lan_if: str, lan_net: str, wan_if: str, stun_host: str | None,
           uuid: str | None = None) -> str:
    """miniupnpd.conf text (options as in miniupnpd 2.3's sample configuration).
    ``stun_host`` None: no STUN check (a NAT box behind a CGNAT: miniupnpd then sees its
    private WAN address, says port forwarding is impossible and reports that address,
    as a real gateway behind a carrier-grade NAT does)."""
    on = protocols(mode)
    stun = ([] if stun_host is None else
            ["ext_perform_stun=yes", f"ext_stun_host={stun_host}", f"ext_stun_port={STUN_PORT}"])
    lines = [
        f"ext_ifname={wan_if}",
        f"listening_ip={lan_if}",
        f"http_port={HTTP_PORT}",
        f"enable_natpmp={'yes' if on['nat_pmp'] else 'no'}",
        f"enable_upnp={'yes' if on['upnp'] else 'no'}",
        *stun,
        "secure_mode=yes",
        "system_uptime=no",
        f"min_lifetime={MIN_LIFETIME}",
        f"max_lifetime={MAX_LIFETIME}",
        f"uuid={uuid or _uuid.UUID(int=0x5354554e)}",
        f"upnp_table_name={TABLE}",
        f"upnp_nat_table_name={TABLE}",
        "upnp_forward_chain=miniupnpd",
        "upnp_nat_chain=prerouting_miniupnpd",
        "upnp_nat_postrouting_chain=postrouting_miniupnpd",
        f"allow 1024-65535 {lan_net} 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
    ]
    return "\n".join(lines) + "\n"


def ruleset(wan_if: str, wan_ip: str) -> str:
    """The table and chains miniupnpd fills (it creates none itself), and one rule of
    ours: the NAT box's own packets keep their source port (a null SNAT binding before
    the lab's ``stunturn_lab`` postrouting chain). A real gateway does not translate
    its own traffic; without it miniupnpd's STUN check would see the lab's symmetric
    NAT (``masquerade random``) applied to itself and turn port forwarding off."""
    return (f"table inet {TABLE} {{\n"
            "  chain postrouting_self { type nat hook postrouting priority srcnat - 10; "
            f'policy accept; oifname "{wan_if}" ip saddr {wan_ip} snat ip to {wan_ip}; }}\n'
            "  chain forward { type filter hook forward priority filter; policy accept; "
            "jump miniupnpd; }\n"
            "  chain miniupnpd { }\n"
            "  chain prerouting { type nat hook prerouting priority dstnat; policy accept; "
            "jump prerouting_miniupnpd; }\n"
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept; "
            "jump postrouting_miniupnpd; }\n"
            "  chain prerouting_miniupnpd { }\n"
            "  chain postrouting_miniupnpd { }\n"
            "}\n")


#: miniupnpd's log lines that say a service is up (``-d`` logs to stderr)
READY_LINES = {"nat_pmp": "Listening for NAT-PMP/PCP traffic on port",
               "upnp": "HTTP listening on port",
               "stun": "STUN: ext interface"}      # the check's verdict, either way


def ready(mode: str, log: str, *, stun: bool = True) -> bool:
    """Whether miniupnpd's log says every service of ``mode`` is up (pure)."""
    on = protocols(mode)
    want = ["stun"] * stun + [k for k in ("nat_pmp", "upnp") if on[k]]
    return all(READY_LINES[k] in log for k in want)
