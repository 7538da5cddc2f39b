"""Probe helper routes (placeholder).

``register(bp)`` adds routes to the signaling blueprint that let a probe ask the
server to open a TCP connection / send a UDP datagram back to the caller (used to
test inbound filtering, RFC 4787 section 5 / RFC 5382 section 5). This placeholder
adds nothing; the implementation returns ``True`` when it registered its routes,
which ``/v1/info`` reports as ``"probe_assist": true``.
"""

from __future__ import annotations


def register(bp):
    """Add the probe-assist routes to ``bp``; return ``True`` if any were added."""
    pass
