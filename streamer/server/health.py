"""Health (`/healthz`), readiness with the models' measured load (`/readyz`) and Prometheus `/metrics`."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

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
    body: dict[str, object] = {
        "ready": state.ready,
        "accepting": state.accepting,
        "active_streams": state.active,
        "max_streams": limits.max_streams,
        "models": state.model_names,
        "load": load,
    }
    if state.worker is not None:
        # Stream counts and readiness above are the whole server's; the load above is this worker's own
        # engines (where a stream admitted here runs), and the mean over the workers decides readiness.
        for name in state.models:
            pooled = state.capacity.pooled_load(name)
            if pooled is not None:
                load[name]["server_busy_fraction"] = round(pooled[0], 3)
                load[name]["server_queue_wait_s"] = round(pooled[1], 3)
        body["worker"] = {"name": state.worker, "active_streams": state.capacity.own()}
    return web.json_response(body, status=200 if state.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; in a worker process, the whole server's (every worker's, merged)."""
    state = request.app[STATE]
    if state.cluster_metrics is not None:
        return web.Response(body=await state.cluster_metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})
    state.refresh_gauges()
    body, content_type = state.metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})
