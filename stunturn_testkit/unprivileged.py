"""Run a command as an ordinary user (needs root): the suites' unprivileged runs."""

from __future__ import annotations

#: run argv as uid/gid 65534 with no capability but CAP_DAC_READ_SEARCH: that one only
#: lets the interpreter and the checkout be read wherever they live (pyenv under a
#: 0700 /root, a CI clone under a 0700 temp folder); it grants nothing on the network
#: (no binding below 1024, no raw sockets, no CAP_NET_ADMIN)
UNPRIVILEGED_PREFIX = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
                       "--bounding-set=-all,+dac_read_search"]


def unprivileged_argv(argv: list[str]) -> list[str]:
    """``argv`` wrapped to run as an ordinary user (nobody, no network capability); needs root."""
    return [*UNPRIVILEGED_PREFIX, *argv]
