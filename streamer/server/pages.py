"""The web page and what it reads: `/` (live captions), `/watch` (the watch view), `/static/` (its files,
shipped in `streamer/web/` as package data) and `GET /v1/models` (the served models, Deepgram's shape).

`/v1/models` takes the same credentials as `/v1/listen` (401 without them when the server has keys);
the page asks it first, and shows its API-key field only when it gets a 401.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from aiohttp import web

from streamer.errors import StreamerError
from streamer.server.admission import check_origin
from streamer.server.auth import authorize
from streamer.server.errors import error_response
from streamer.server.state import STATE

WEB = Path(__file__).resolve().parent.parent / "web"
CACHE = {"Cache-Control": "no-cache"}  # pages are small; a new version must never mix with an old one


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB / "index.html", headers=CACHE)


async def watch_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB / "watch.html", headers=CACHE)


async def models(request: web.Request) -> web.Response:
    """`{"stt": [...], "tts": []}`: one entry per served model, with its languages and identity."""
    state = request.app[STATE]
    try:
        check_origin(state.config.allowed_origins, request)
        authorize(state.config.api_keys, request)
    except StreamerError as exc:
        return error_response(state, exc, str(uuid.uuid4()))
    stt = [
        {
            "name": model.name,
            "canonical_name": model.name,
            "architecture": model.identity.info.arch,
            "languages": [model.spec.language],
            "version": model.identity.info.version,
            "uuid": model.identity.uuid,
            "batch": True,
            "streaming": True,
            "formatted_output": False,
        }
        for model in state.models.values()
    ]
    return web.json_response({"stt": stt, "tts": []})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/watch", watch_page)
    app.router.add_get("/v1/models", models)
    app.router.add_static("/static", WEB, show_index=False, append_version=False)
