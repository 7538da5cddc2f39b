"""What probe-assist sends on a connection it opens back to the caller (server and probe share it).

Never caller-chosen bytes: a fixed magic prefix that no text protocol reads as a command
(it starts with NUL and 0xFF bytes and holds no line break), then the caller's token as
lowercase hex, so a DNS-rebinding page cannot make our server deliver e.g. ``FLUSHALL\\r\\n``
to a service on the caller's own host.
"""

from __future__ import annotations

#: the frame's fixed prefix (16 bytes)
ASSIST_MAGIC = b"\x00\xffSTUNTURN-PA/1\x00"
#: the longest token (bytes) a frame carries
MAX_TOKEN = 16


def assist_frame(token: bytes) -> bytes:
    """The bytes probe-assist sends for ``token`` (at most :data:`MAX_TOKEN` bytes)."""
    if len(token) > MAX_TOKEN:
        raise ValueError(f"a probe-assist token is at most {MAX_TOKEN} bytes")
    return ASSIST_MAGIC + token.hex().encode("ascii")
