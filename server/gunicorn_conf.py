"""gunicorn settings for several workers: ``/metrics`` counts all of them.

    gunicorn -c python:stunturn_server.gunicorn_conf -k gevent -w N stunturn_server.wsgi:app

Each worker is its own process with its own counters; a scrape reaches one worker. With
this file every worker writes its figures to files in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode) and any worker's ``/metrics`` sums them:

- ``PROMETHEUS_MULTIPROC_DIR`` is set when gunicorn reads this file, before a worker
  imports prometheus_client (which decides its mode once, at import): the directory
  given in the environment (one for this server only), else a fresh private one that
  is removed when gunicorn exits;
- :func:`on_starting` empties it of earlier runs' ``*.db`` files (their counts would be
  added to this run's);
- :func:`child_exit` removes a dead worker's live gauges (``stunturn_waiters`` is a
  ``livesum``); its counters and histograms stay in the sums, as a Prometheus counter
  must not go down.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"

_made_here: str | None = None
if not os.environ.get(ENV):
    _made_here = tempfile.mkdtemp(prefix="stunturn-metrics-")
    os.environ[ENV] = _made_here


def on_starting(server) -> None:
    path = os.environ[ENV]
    os.makedirs(path, mode=0o700, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, os.environ[ENV])


def on_exit(server) -> None:
    if _made_here is not None:
        shutil.rmtree(_made_here, ignore_errors=True)
