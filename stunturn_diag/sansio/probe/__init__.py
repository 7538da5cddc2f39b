"""The probe's pure core (sans-IO): transactions (:mod:`.engine`), which probes
(:mod:`.plan`), verdicts (:mod:`.classify`, :mod:`.tcp_classify`), the result and its
report. No sockets, clocks or random sources: the runners in :mod:`stunturn_diag.probe`
pass them in."""
