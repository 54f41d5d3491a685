"""Build the `/v1/listen` (and `/v1/watch`) WebSocket URLs from a server base URL and parameters."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from client.options import SAMPLE_RATE

LISTEN_PATH = "/v1/listen"
WATCH_PATH = "/v1/watch"
_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def listen_url(
    base: str,
    *,
    language: str,
    model: str | None = None,
    interim: bool = True,
    utterance_end_ms: int = 1000,
    tag: str | None = None,
    resumable: bool = False,
) -> str:
    """`ws(s)://host[:port][/prefix]/v1/listen?...` for a base like `ws://h:8000`, `https://h/x`, `h:8000`.

    http(s) becomes ws(s); a base that already ends in /v1/listen is not extended twice; query parameters
    already in the base are kept unless the client sets the same name. Raises ValueError for other schemes.
    """
    params: dict[str, str] = {
        "language": language,
        "encoding": "linear16",
        "sample_rate": str(SAMPLE_RATE),
        "channels": "1",
        "interim_results": "true" if interim else "false",
        "vad_events": "true",
    }
    # Deepgram only accepts utterance_end_ms together with interim results.
    if interim:
        params["utterance_end_ms"] = str(utterance_end_ms)
    if model:
        params["model"] = model
    if tag:
        params["tag"] = tag
    if resumable:  # the client replays its audio after a restart: the server need not cut utterances
        params["resumable"] = "true"
    return _endpoint(base, LISTEN_PATH, params)


def watch_url(base: str, tag: str) -> str:
    """`ws(s)://host[:port][/prefix]/v1/watch?tag=TAG` for the same bases as `listen_url`."""
    return _endpoint(base, WATCH_PATH, {"tag": tag})


def _endpoint(base: str, endpoint: str, params: dict[str, str]) -> str:
    text = base.strip()
    if "://" not in text:
        text = "ws://" + text
    parts = urlsplit(text)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {base!r} (use ws, wss, http or https)")
    if not parts.hostname:
        raise ValueError(f"no host in URL {base!r}")
    path = parts.path.rstrip("/")
    for known in (LISTEN_PATH, WATCH_PATH):
        if path.endswith(known):
            path = path[: -len(known)]
    path += endpoint
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query = urlencode([*kept, *params.items()])
    return urlunsplit((scheme, parts.netloc, path, query, ""))
