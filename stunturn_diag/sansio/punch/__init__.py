"""Pure (sans-IO) hole punching: wire format, handshake, sealing, keys, strategy
decision, target lists, counter reasoning, the UDP punch engine and the TCP punch
machine. No sockets, clocks or random sources: the runners in
:mod:`stunturn_diag.punch` pass them in."""
