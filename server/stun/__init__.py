"""STUN service of the server (RFC 8489 Binding, RFC 5780 behaviour discovery, RFC 3489).

- :mod:`.service`  UDP sockets and TCP listeners on every endpoint, one background thread;
  what to answer is decided by the pure
  :class:`stunturn_server.sansio.stun_responder.StunResponder`
"""
