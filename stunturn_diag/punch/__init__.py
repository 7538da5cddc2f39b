"""UDP/TCP hole punching between two peers paired by the signaling server.

Pure modules (no sockets, clocks or random sources) are in
:mod:`stunturn_diag.sansio.punch`: ``wire`` (roles, kinds, the versioned header),
``handshake`` (CPace handshake), ``cpace`` (CPace on X25519: Elligator 2, ISK), ``seal``
(AEAD sealing: UDP frames, TCP records), ``keys`` (rendezvous identifier, key
generation and strength), ``decision`` (strategy choice), ``candidates`` (target
lists), ``counter`` (a sequential NAT's port counter), ``engine`` (UDP punch schedule),
``tcp_machine`` (TCP punch rounds and nomination). Here: ``udp`` / ``tcp`` /
``tcp_runner`` (socket runners), ``handshake_runner`` (TCP handshake driver),
``secure_stream`` (the encrypted stream), ``channel`` (the encrypted UDP endpoint),
``api`` (the library entry points), ``relay`` (stdin/stdout, forward and listen
plumbing for the CLI).

Library use::

    from stunturn_diag.punch import initiate, receive
    result = initiate("http://server:8080", key, target_ip="203.0.113.7", protocol="udp")
    result.connection.send(b"hi")
"""

from __future__ import annotations

from ..errors import AuthenticationError, PunchError

__all__ = ["AuthenticationError", "PunchError", "initiate", "receive", "PunchResult"]


def __getattr__(name: str):
    # lazy: keeps ``import stunturn_diag.sansio.punch.handshake`` free of socket/HTTP imports
    if name in ("initiate", "receive", "PunchResult", "PunchOptions"):
        from . import api
        return getattr(api, name)
    raise AttributeError(name)
