"""STUN responder of the server (RFC 8489 Binding, RFC 5780 behaviour discovery, RFC 3489).

- :mod:`.responder`  pure: one received message -> replies (no sockets, no clocks)
- :mod:`.service`    UDP sockets and TCP listeners on every endpoint, one background thread
"""

from .responder import Outcome, Reply, StunResponder

__all__ = ["Outcome", "Reply", "StunResponder"]
