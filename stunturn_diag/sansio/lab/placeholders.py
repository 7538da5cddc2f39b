"""Command templates of ``lab run`` / ``lab matrix`` (pure).

A command is a shell command line with placeholders ``{server_ip}``, ``{alt_ip}``,
``{a_public_ip}``, ``{b_public_ip}``, ``{peer_public_ip}`` (peer commands only: the
other site's public IP), ``{key}``, ``{type_a}``, ``{type_b}`` and ``{logdir}``; with a
relay (``lab matrix --relay``: coturn on the server host) also ``{turn_server}``
(``IP:PORT``), ``{turn_secret}`` (its ``static-auth-secret``; the server command's
only, empty for the peers) and ``{turn_realm}``.
``${NAME}`` (shell syntax) is left alone; ``{{`` and ``}}`` stand for literal braces.
Values are shell-quoted where they need it (only a ``{logdir}`` with spaces does).
The same values reach every command as environment variables ``STUNTURN_LAB_<NAME>``.
"""

from __future__ import annotations

import re
import shlex

from stunturn_diag.errors import ConfigError

#: the relay's placeholders: empty without one (a template using them needs ``relay``)
TURN_NAMES = ("turn_server", "turn_secret", "turn_realm")
NAMES = ("server_ip", "alt_ip", "a_public_ip", "b_public_ip", "peer_public_ip", "key",
         "type_a", "type_b", "logdir") + TURN_NAMES
ROLES = ("server", "a", "b")
ENV_PREFIX = "STUNTURN_LAB_"

_FIELD = re.compile(r"\{\{|\}\}|(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def values_for(role: str, common: dict[str, str]) -> dict[str, str]:
    """The placeholder values of one role's command: ``common`` (every name but
    ``peer_public_ip``; the relay's are empty when missing) plus, for peers, the other site's public IP."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}", hint=f"roles: {', '.join(ROLES)}")
    missing = [n for n in NAMES if n != "peer_public_ip" and n not in common
               and n not in TURN_NAMES]
    if missing:
        raise ConfigError(f"placeholder value(s) missing: {', '.join(missing)}")
    values = {n: str(common.get(n, "")) for n in NAMES if n != "peer_public_ip"}
    if role != "server":
        values["turn_secret"] = ""        # the relay's secret is the server's, not the peers'

    if role == "a":
        values["peer_public_ip"] = values["b_public_ip"]
    elif role == "b":
        values["peer_public_ip"] = values["a_public_ip"]
    return values


def substitute(template: str, values: dict[str, str], *, role: str = "peer") -> str:
    """``template`` with each ``{name}`` replaced (shell-quoted as needed).

    An unknown name, or ``{peer_public_ip}`` in the server's command, is a ConfigError.
    """
    def one(match: re.Match) -> str:
        text = match.group(0)
        if text in ("{{", "}}"):
            return text[0]
        name = match.group(1)
        if name not in NAMES:
            raise ConfigError(f"unknown placeholder {{{name}}} in the {role} command",
                              hint="known: " + ", ".join("{" + n + "}" for n in NAMES)
                              + "; write {{ and }} for literal braces")
        if name not in values:
            raise ConfigError(f"{{{name}}} has no value in the {role} command",
                              hint="it is for the peer commands (--a, --b) only")
        return shlex.quote(values[name])

    return _FIELD.sub(one, template)


def check(template: str, role: str) -> None:
    """Raise ConfigError now if ``template`` would not substitute for ``role``."""
    dummy = {n: "x" for n in NAMES if n != "peer_public_ip"}
    substitute(template, values_for(role, dummy), role=role)


def used(template: str | None) -> set[str]:
    """The placeholder names ``template`` uses."""
    return {m.group(1) for m in _FIELD.finditer(template or "") if m.group(1)}


def environment(values: dict[str, str]) -> dict[str, str]:
    """``{"STUNTURN_LAB_SERVER_IP": ..., ...}`` for one role's values."""
    return {ENV_PREFIX + name.upper(): value for name, value in values.items()}
