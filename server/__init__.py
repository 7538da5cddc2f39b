"""stunturn-diag signaling server and STUN responder (installed as ``stunturn_server``).

- ``create_app(config)``  Flask app factory (the signaling, relay, metrics and, when
  configured, probe-assist blueprints; JSON API)
- ``start_server(config)`` embed the whole server (HTTP + STUN) with one call;
  returns a handle with ``.stop()``.

The pure core (no I/O) is :mod:`stunturn_server.sansio`; docs/ARCHITECTURE.md has the layers.
"""

from .config import ServerConfig

__all__ = ["ServerConfig"]
