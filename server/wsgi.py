"""WSGI entry for other servers:
``gunicorn -c python:stunturn_server.gunicorn_conf -k gevent -w N stunturn_server.wsgi:app``
(the settings make ``/metrics`` count every worker: :mod:`stunturn_server.gunicorn_conf`).

Configuration comes from ``STUNTURN_*`` environment variables
(:func:`stunturn_server.config.config_from_env`). Several workers must share a Redis
(``STUNTURN_REDIS_URL``) and the key-hashing secret (``STUNTURN_SERVER_SECRET_FILE`` or
``STUNTURN_SERVER_SECRET``); in memory (no Redis) run one worker, since each would pair
only with itself. Needs gevent's worker: waits and the Redis store's sockets cooperate
with its hub. STUN is not served here (``stunturn-diag serve`` runs it).
"""

from __future__ import annotations

from .app import create_app
from .config import config_from_env
from .logs import configure_logging
from .runner import SOCKET_ENVIRON_KEY, _gevent_event, gevent_watch_hangup, raise_nofile_limit


def _watch_gunicorn_hangup(environ: dict, on_hangup):
    """gunicorn's gevent worker puts the client socket at ``gunicorn.socket``."""
    return gevent_watch_hangup({SOCKET_ENVIRON_KEY: environ.get("gunicorn.socket")}, on_hangup)


config = config_from_env()
raise_nofile_limit()  # every waiting initiator holds a socket
configure_logging(config.log_level, config.log_format)
app = create_app(config, signal_factory=_gevent_event, watch_hangup=_watch_gunicorn_hangup)
