"""Signatures of the server's webhook posts, for the server and for receivers that verify them.

Header `X-Streamer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>` with the secret
given to the server as `--callback-secret`. A receiver checks it with
`verify(secret, request.headers["X-Streamer-Signature"], body)` (or the same few lines in any language);
the timestamp inside the signed text stops a captured post from being replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Streamer-Signature"
DEFAULT_TOLERANCE_S = 300.0


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body`, signed now (or at `timestamp`)."""
    moment = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{moment}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={moment},v1={digest}"


def verify(
    secret: str, header: str, body: bytes, tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None
) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance_s` of `now` (default: the clock)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        moment = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - moment) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{moment}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)
