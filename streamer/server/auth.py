"""API keys: which configured key a request carries, compared in constant time, never logged.

`authorize(keys, request)` -> the matched key, None when `keys` is empty (auth off), or AuthError.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from aiohttp import web

from streamer.server.errors import AuthError


def offered_protocols(request: web.Request) -> list[str]:
    """The WebSocket subprotocols a handshake offers, in order."""
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def authorize(keys: frozenset[str], request: web.Request) -> str | None:
    """The configured key the request carries (None when auth is off); raises AuthError otherwise.

    Keys come as `Authorization: Token <key>` / `Bearer <key>`, as the password of `Basic` credentials
    (what Asterisk and FreeSWITCH can send), or as the browser form `Sec-WebSocket-Protocol: token,
    <key>`. Never log a candidate or the key.
    """
    if not keys:
        return None
    candidates: list[str] = []
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        candidates.append(value.strip())
    elif scheme.lower() == "basic" and value.strip():
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, ValueError):
            raise AuthError("malformed Basic credentials") from None
        if password:
            candidates.append(password)
    offered = offered_protocols(request)
    if "token" in offered:
        candidates.extend(p for p in offered if p != "token")
    if not candidates:
        raise AuthError("missing credentials: send 'Authorization: Token <key>'")
    matched: str | None = None
    for candidate in candidates:  # every candidate against every key: no early exit
        found = match_key(keys, candidate)
        matched = found if found is not None else matched
    if matched is None:
        raise AuthError("invalid credentials")
    return matched


def match_key(keys: frozenset[str], candidate: str) -> str | None:
    """The key equal to `candidate`, compared in constant time with every key.

    Digests are compared rather than the keys themselves, so that the time taken depends neither on how
    long a key is nor on how much of it the candidate got right, and the loop never stops early, so it
    does not tell which key matched either.
    """
    given = hashlib.sha256(candidate.encode()).digest()
    matched: str | None = None
    for key in sorted(keys):
        equal = hmac.compare_digest(hashlib.sha256(key.encode()).digest(), given)
        matched = key if equal else matched
    return matched
