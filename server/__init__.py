"""stunturn-diag signaling server and STUN responder (installed as ``stunturn_server``).

- ``create_app(config)``  Flask app factory (one blueprint, JSON API)
- ``start_server(config)`` embed the whole server (HTTP + STUN) with one call;
  returns a handle with ``.stop()``.
"""

from .config import ServerConfig

__all__ = ["ServerConfig"]
