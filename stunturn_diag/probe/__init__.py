"""NAT behaviour diagnosis (RFC 4787 / RFC 5382 / RFC 5780).

>>> result = run_probe("http://127.0.0.1:8080")        # our server: UDP + TCP
>>> result = run_probe(stun="192.0.2.1:3478")          # any RFC 5780 server: UDP
>>> result.to_json()["udp"]["mapping"], result.profile()

Pure parts live in :mod:`stunturn_diag.sansio.probe`: ``engine`` (transactions), ``plan``
(which probes), ``classify`` and ``tcp_classify`` (verdicts). I/O: :mod:`.udp_runner`,
:mod:`.tcp_runner` (with :mod:`.simopen_runner`), :mod:`.layers`.
"""

from .api import run_probe
from stunturn_diag.sansio.probe.result import (EXIT_DIAGNOSED, EXIT_PARTIAL, EXIT_UNREACHABLE, SCHEMA,
                                               SCHEMA_VERSION, ProbeResult)

__all__ = ["run_probe", "ProbeResult", "SCHEMA", "SCHEMA_VERSION", "EXIT_DIAGNOSED", "EXIT_PARTIAL",
           "EXIT_UNREACHABLE"]
