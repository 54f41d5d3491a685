"""Health (`/healthz`), readiness with the models' measured load (`/readyz`) and Prometheus `/metrics`."""

from __future__ import annotations

from aiohttp import web

from streamer.server.state import STATE


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    limits = state.config.limits
    load = {}
    for name, model in state.models.items():
        snapshot = model.batcher.load.snapshot()
        load[name] = {
            "busy_fraction": round(snapshot.busy_fraction, 3),
            "queue_wait_s": round(snapshot.queue_wait_s, 3),
            "saturated": state.saturation(name) is not None,
        }
    body = {
        "ready": state.ready,
        "accepting": state.accepting,
        "active_streams": state.active,
        "max_streams": limits.max_streams,
        "models": state.model_names,
        "load": load,
    }
    return web.json_response(body, status=200 if state.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.refresh_gauges()
    body, content_type = state.metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})
