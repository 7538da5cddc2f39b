"""TURN REST API credentials (draft-uberti-behave-turn-rest-00, as coturn's
``use-auth-secret`` / ``static-auth-secret`` checks them). Pure.

username = ``<expiry unix time>:<random id>``; password =
base64(HMAC-SHA1(shared secret, username)). The TURN server recomputes the password
from the username, and refuses it once the expiry has passed: nothing to store, and a
credential handed to a peer is worthless after ``ttl`` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def rest_password(secret: str, username: str) -> str:
    return base64.b64encode(hmac.new(secret.encode("utf-8"), username.encode("utf-8"),
                                     hashlib.sha1).digest()).decode("ascii")


def rest_credentials(secret: str, *, now: float, ttl: int, random_id: str) -> dict:
    """``{"username", "password", "ttl", "expires"}`` valid until ``now + ttl``."""
    expires = int(now) + int(ttl)
    username = f"{expires}:{random_id}"
    return {"username": username, "password": rest_password(secret, username), "ttl": int(ttl),
            "expires": expires}
