"""The server's pure (sans-IO) core: no sockets, clocks, threads, random sources or Flask.

Every function and method here takes what it needs from its caller: ``now`` (monotonic
seconds), ids and secrets already drawn, a lock where threads share an instance. The
modules beside this package (``stunturn_server.api``, ``.store``, ``.runner`` ...) do the
I/O and import from here; nothing here imports them (``tests/test_server_layers.py``).

- :mod:`.matching`       pairing: slots, waiters, matches, :class:`~.matching.Matcher` and the
                         store interface it works over (:class:`~.matching.MatchStore`)
- :mod:`.validation`     request bodies of every route (signaling, probe-assist, relay exchange)
- :mod:`.limits`         source_of, token buckets, failure / concurrency limits, log throttle
- :mod:`.probe_assist`   probe-assist's admission limits, Host check and connect-back plan
- :mod:`.proxy`          trusted proxies, Forwarded / X-Forwarded-For, the PROXY protocol header
- :mod:`.stun_responder` one received STUN message -> the replies to send
"""
