"""The server's edge: HTTP and WebSocket endpoints, ingress dialects, admission, the live-stream bridge.

    from streamer.server import create_app, run

Layout (docs/ARCHITECTURE.md has the picture): `app` (routes, lifecycle, TLS), `state` (models, capacity,
drain), `admission` and `auth` (handshake checks), `errors` (the error -> HTTP table), `live` (the one
transport-neutral live stream), `outbox`, `timed_stream`, `transport` and `websocket` (connections),
`prerecorded` (POST), `health` (/healthz, /readyz, /metrics), `ingress/` (one codec per wire dialect);
for `--workers N`: `supervisor` (the parent process), `worker` (each child), `handoff` (connections to
workers), `control` (their messages) and `capacity` (stream slots every worker shares).
This package is the only place that maps `streamer.errors` to HTTP statuses and close codes.
"""

from streamer.server.app import create_app, run, ssl_context
from streamer.server.errors import AuthError, EngineSaturated
from streamer.server.state import STATE, ServerState

__all__ = ["STATE", "AuthError", "EngineSaturated", "ServerState", "create_app", "run", "ssl_context"]
