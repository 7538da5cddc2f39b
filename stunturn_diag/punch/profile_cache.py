"""A short-lived cache of this network's NAT profile, so ``punch`` need not probe every time.

The profile (the quick probe's ``mapping``/``filtering``/``port_allocation`` per transport)
describes the network, not the peer: it is cached per *network* and *server*. The network
is named by the local IP that routes to the server and the default gateway's IP and link
address (MAC), which differ between two networks that happen to use the same private
addressing; the public IP the probe saw is stored too and checked against the STUN answer
before a cached profile is shared (a moved public IP means another network or a renumbered
one: the entry is dropped and the probe runs again).

Pure part (no files, no clock): :func:`cache_key`, :func:`lookup`, :func:`remember`. They
take ``now`` (seconds since the epoch, from the caller) and the document (the parsed file).
I/O part: :class:`ProfileCache` reads and writes one JSON file in the user cache directory
(``$XDG_CACHE_HOME/stunturn-diag`` or ``~/.cache/stunturn-diag``), written atomically
(a temporary file renamed over it) with mode 0600. Entries hold no access key and no
address in clear: the entry's name is a digest of the network and server.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: how long a cached profile is trusted (seconds); NATs rarely change, networks do
DEFAULT_MAX_AGE = 600.0
#: entries kept at most (oldest dropped first); one per network and server
MAX_ENTRIES = 32
FILE_NAME = "nat-profiles.json"
FORMAT = "stunturn-diag/nat-profile-cache"


@dataclass(frozen=True)
class Network:
    """What identifies the network a profile was measured on (see the module docstring)."""

    local_ip: str
    gateway_ip: str | None = None
    gateway_mac: str | None = None

    @property
    def identified(self) -> bool:
        """Only a network with a known gateway (IP and MAC) is worth caching for."""
        return bool(self.local_ip and self.gateway_ip and self.gateway_mac)


def cache_key(server_url: str, network: Network) -> str:
    """The entry's name: a digest of the server and the network (no address in clear)."""
    text = "\x00".join([server_url, network.local_ip, network.gateway_ip or "",
                        (network.gateway_mac or "").lower()])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def lookup(doc: object, key: str, now: float, max_age: float = DEFAULT_MAX_AGE) -> dict | None:
    """The entry (``{"profile": {...}, "saved_at": t, ...}``) under ``key`` if fresh, else None.

    Fresh: saved at most ``max_age`` seconds before ``now`` and not in the future (a clock
    that went back makes the entry suspect). Anything malformed is a miss.
    """
    entries = doc.get("entries") if isinstance(doc, dict) else None
    entry = entries.get(key) if isinstance(entries, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("profile"), dict):
        return None
    saved = entry.get("saved_at")
    if not isinstance(saved, (int, float)) or isinstance(saved, bool):
        return None
    if not 0 <= now - saved <= max_age:
        return None
    return entry


def remember(doc: object, key: str, entry: dict, now: float,
             max_age: float = DEFAULT_MAX_AGE) -> dict:
    """A new document with ``entry`` (it must hold a ``profile`` dict) stored under ``key``,
    stamped ``saved_at=now``; stale entries are pruned and at most :data:`MAX_ENTRIES` kept
    (newest first)."""
    entries = doc.get("entries") if isinstance(doc, dict) else None
    kept = {k: e for k, e in (entries or {}).items()
            if k != key and lookup({"entries": {k: e}}, k, now, max_age) is not None}
    kept[key] = {**entry, "saved_at": now}
    newest = sorted(kept.items(), key=lambda kv: kv[1]["saved_at"], reverse=True)[:MAX_ENTRIES]
    return {"format": FORMAT, "entries": dict(newest)}


def forget(doc: object, key: str) -> dict:
    """A new document without ``key``."""
    entries = doc.get("entries") if isinstance(doc, dict) else None
    return {"format": FORMAT, "entries": {k: e for k, e in (entries or {}).items() if k != key}}


# -- I/O -------------------------------------------------------------------------------------

def default_dir() -> Path:
    """``$XDG_CACHE_HOME/stunturn-diag``, else ``~/.cache/stunturn-diag``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stunturn-diag"


def default_gateway(proc_route: str = "/proc/net/route",
                    proc_arp: str = "/proc/net/arp") -> tuple[str | None, str | None]:
    """(IP, MAC) of the IPv4 default gateway from Linux's /proc (None, None elsewhere)."""
    try:
        with open(proc_route, encoding="ascii") as fh:
            rows = [line.split() for line in fh.readlines()[1:]]
    except OSError:
        return None, None
    best = None
    for row in rows:
        if len(row) >= 7 and row[1] == "00000000" and int(row[3], 16) & 0x2:  # RTF_GATEWAY
            metric = int(row[6])
            if best is None or metric < best[0]:
                best = (metric, socket.inet_ntoa(struct.pack("<I", int(row[2], 16))))
    if best is None:
        return None, None
    ip = best[1]
    try:
        with open(proc_arp, encoding="ascii") as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if len(cols) >= 4 and cols[0] == ip and cols[3] != "00:00:00:00:00:00":
                    return ip, cols[3].lower()
    except OSError:
        pass
    return ip, None


class ProfileCache:
    """The cache file; ``clock`` gives seconds since the epoch (injected in tests)."""

    def __init__(self, directory: Path | str | None = None, *, max_age: float = DEFAULT_MAX_AGE,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory) if directory is not None else default_dir()
        self.path = self.directory / FILE_NAME
        self.max_age = max_age
        self.clock = clock

    def _load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def get(self, key: str) -> dict | None:
        return lookup(self._load(), key, self.clock(), self.max_age)

    def put(self, key: str, entry: dict) -> None:
        """Store atomically (mode 0600); an unwritable cache is not an error: it is skipped."""
        self._write(remember(self._load(), key, entry, self.clock(), self.max_age))

    def drop(self, key: str) -> None:
        self._write(forget(self._load(), key))

    def _write(self, doc: dict) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".nat-profiles.", dir=self.directory)  # mode 0600
        except OSError:
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
