"""UDP/TCP hole punching between two peers paired by the signaling server.

Modules: ``wire`` (roles, kinds, the versioned header), ``auth`` (pure CPace
handshake), ``cpace`` (pure CPace on X25519: Elligator 2, ISK), ``seal`` (pure AEAD
sealing: UDP frames, TCP records), ``keys`` (rendezvous identifier, key generation
and strength), ``decision`` (pure strategy
choice), ``engine`` (pure UDP punch schedule), ``udp`` / ``tcp`` (socket runners),
``secure_stream`` (TCP handshake driver and the encrypted stream), ``channel`` (the
encrypted UDP endpoint), ``api`` (the library entry points), ``relay``
(stdin/stdout, forward and listen plumbing for the CLI).

Library use::

    from stunturn_diag.punch import initiate, receive
    result = initiate("http://server:8080", key, target_ip="203.0.113.7", protocol="udp")
    result.connection.send(b"hi")
"""

from __future__ import annotations

from ..errors import AuthenticationError, PunchError

__all__ = ["AuthenticationError", "PunchError", "initiate", "receive", "PunchResult"]


def __getattr__(name: str):
    # lazy: keeps ``import stunturn_diag.punch.auth`` free of socket/HTTP imports
    if name in ("initiate", "receive", "PunchResult", "PunchOptions"):
        from . import api
        return getattr(api, name)
    raise AttributeError(name)
