"""Pure (sans-IO) code: no sockets, clocks, threads or randomness; see docs/ARCHITECTURE.md."""
