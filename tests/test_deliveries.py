"""Where transcripts go besides the stream's socket: /v1/watch subscribers and signed webhooks.

Tier 4: a real server on port 0 (tone engine), real WebSocket clients, and a real HTTP receiver
(`tests/receivers.py`) that is up, down for a while, never comes back, or refuses.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer.config import DeliveryConfig
from streamer.metrics import Metrics
from streamer.server import STATE
from streamer.server.outbox import Outgoing
from streamer.server.watch import WatchHub, tag_key
from tests.receivers import Receiver, words
from tests.test_server import (
    Json,
    config,
    drain,
    final_words,
    handshake_error,
    pcm16,
    send_audio,
    serve,
    utterances,
    words_of,
)

FAST = DeliveryConfig(callback_backoff_s=0.05, callback_max_backoff_s=0.2, callback_attempts=4)


def watch_url(port: int, query: str) -> str:
    return f"ws://127.0.0.1:{port}/v1/watch?{query}"


async def watch_until_closed(ws: ClientConnection, messages: list[Json]) -> None:
    try:
        async for raw in ws:
            messages.append(json.loads(raw))
    except ConnectionClosed:
        pass


def without_stream(message: Json) -> Json:
    return {k: v for k, v in message.items() if k != "stream"}


def without_resume(messages: list[Json]) -> list[Json]:
    """What the sender got, less its resume tokens: only the stream's own client may resume it."""
    return [{k: v for k, v in m.items() if k != "resume"} for m in messages]


async def stream_phrases(port: int, query: str, *phrases: list[str]) -> list[Json]:
    async with connect(f"ws://127.0.0.1:{port}/v1/listen?{query}") as ws:
        await send_audio(ws, pcm16(utterances(*phrases)), pause=0.005)
        await ws.send(json.dumps({"type": "CloseStream"}))
        return await drain(ws)


# ---- watch ----


async def test_watcher_gets_what_the_sender_gets_with_a_stream_field() -> None:
    phrases = (["abc", "bad"], ["cafe", "dab"])
    async with serve() as server, asyncio.timeout(30):
        watched: list[Json] = []
        async with connect(watch_url(server.port, "tag=desk-1")) as viewer:
            task = asyncio.create_task(watch_until_closed(viewer, watched))
            sent = await stream_phrases(
                server.port, "tag=desk-1&interim_results=true&vad_events=true", *phrases
            )
            await asyncio.sleep(0.2)
            await viewer.close()
            await task
    assert final_words(watched) == words_of(*phrases)
    # Every message the sender got, in order, reached the watcher (with the stream field added).
    assert [without_stream(m) for m in watched] == without_resume(sent)
    assert not any("resume" in m for m in watched)
    stream_ids = {m["stream"]["id"] for m in watched}
    assert sent[-1]["type"] == "Metadata" and stream_ids == {sent[-1]["request_id"]}
    assert {m["stream"]["tag"] for m in watched} == {"desk-1"}
    assert {m["stream"]["dialect"] for m in watched} == {"deepgram"}
    assert watched[-1]["type"] == "Metadata"


async def test_late_watcher_gets_the_last_finals_and_other_tags_nothing() -> None:
    phrases = (["abc"], ["bad"], ["cafe"])
    async with serve(config(delivery=DeliveryConfig(watch_history=2))) as server, asyncio.timeout(30):
        sent = await stream_phrases(server.port, "tag=room", *phrases)
        request_id = sent[-1]["request_id"]
        for query in ("tag=room", f"stream={request_id}"):
            async with connect(watch_url(server.port, query)) as viewer:
                first = [json.loads(await viewer.recv()) for _ in range(2)]
                assert final_words(first) == ["bad", "cafe"]  # the last two finals, in order
        async with connect(watch_url(server.port, "tag=elsewhere")) as viewer:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await viewer.recv()


async def test_watch_needs_a_key_a_target_and_never_takes_audio() -> None:
    cfg = config(api_keys=frozenset({"k1"}))
    async with serve(cfg) as server, asyncio.timeout(20):
        status, body, _ = await handshake_error(watch_url(server.port, "tag=x"))
        assert status == 401
        auth = {"Authorization": "Token k1"}
        status, body, _ = await handshake_error(
            f"ws://127.0.0.1:{server.port}/v1/watch", additional_headers=auth
        )
        assert status == 400 and body["err_code"] == "BAD_REQUEST"
        async with connect(watch_url(server.port, "tag=x"), additional_headers=auth) as viewer:
            await viewer.send(json.dumps({"type": "KeepAlive"}))  # text changes nothing
            await viewer.send(b"\x00\x01")
            with pytest.raises(ConnectionClosed):
                await viewer.recv()
            assert viewer.close_code == 1008 and "cannot send audio" in (viewer.close_reason or "")
        async with connect(watch_url(server.port, "tag=x"), subprotocols=["token", "k1"]) as viewer:  # type: ignore[list-item]
            assert viewer.subprotocol == "token"


async def test_shutdown_closes_watchers_after_the_last_finals() -> None:
    async with serve() as server, asyncio.timeout(30):
        watched: list[Json] = []
        viewer = await connect(watch_url(server.port, "tag=t"))
        task = asyncio.create_task(watch_until_closed(viewer, watched))
        ws = await connect(server.ws_url("tag=t"))
        await send_audio(ws, pcm16(utterances(["abc", "bad"], gap_s=0.1)))
        await server.app[STATE].shutdown()
        await task
        assert viewer.close_code == 1012
        assert final_words(watched) == ["abc", "bad"] and watched[-1]["type"] == "Metadata"
        assert server.app[STATE].watch.count == 0
        status, _, _ = await handshake_error(watch_url(server.port, "tag=t"))
        assert status == 503
        await ws.close()


def test_hub_drops_interims_for_slow_watchers_and_lets_go_of_one_that_never_reads() -> None:
    hub = WatchHub(history=3, queue=4, max_watchers=2, metrics=Metrics())
    slow = hub.subscribe(tag_key("t", "-"))
    keys = [tag_key("t", "-")]
    for i in range(10):
        hub.publish(keys, f'{{"i":{i}}}', "partial")
    assert slow.outbox.qsize() == 4 and slow.closing is None  # interims coalesced, still connected
    for i in range(10):
        hub.publish(keys, f'{{"f":{i}}}', "final")
    assert slow.closing is not None and slow.closing[0] == 1008  # finals piled up: let go
    # A new watcher starts with the last 3 finals; the hub is bounded in watchers.
    fresh = hub.subscribe(tag_key("t", "-"))
    assert [fresh.outbox._items[i].text for i in range(3)] == ['{"f":7}', '{"f":8}', '{"f":9}']  # type: ignore[union-attr]
    from streamer.errors import OverloadError

    with pytest.raises(OverloadError):
        hub.subscribe(tag_key("u", "-"))
    hub.unsubscribe(slow)
    hub.unsubscribe(fresh)
    assert hub.count == 0 and not hub.watched(keys)
    assert isinstance(Outgoing("x", "final"), Outgoing)


# ---- webhooks ----


async def webhook_count(port: int, kind: str, outcome: str) -> float:
    return await metric(port, "streamer_webhook_messages_total", kind=kind, outcome=outcome)


async def metric(port: int, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_webhook_posts_signed_finals_and_metadata() -> None:
    receiver = Receiver(secret="s3cret")
    await receiver.start()
    delivery = replace(FAST, callback_url=receiver.url, callback_secret="s3cret")
    phrases = (["abc", "bad"], ["cafe"])
    try:
        async with serve(config(delivery=delivery)) as server, asyncio.timeout(30):
            sent = await stream_phrases(server.port, "interim_results=true", *phrases)
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts))
            delivered = await metric(
                server.port, "streamer_webhook_messages_total", kind="final", outcome="delivered"
            )
    finally:
        await receiver.stop()
    assert receiver.bad_signatures == 0
    assert words(receiver.finals()) == words_of(*phrases)
    # Finals only (no interims unless asked), in order, the same as on the socket; Metadata last.
    assert [without_stream(p) for p in receiver.posts[:-1]] == without_resume(
        [m for m in sent if m.get("is_final")]
    )
    assert receiver.posts[-1]["type"] == "Metadata" and receiver.methods == ["POST"] * len(receiver.posts)
    assert delivered == len(receiver.posts)


async def test_client_callback_needs_an_allowed_host_and_can_ask_for_interims() -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        async with serve(config(delivery=FAST)) as server, asyncio.timeout(30):
            status, body, _ = await handshake_error(server.ws_url(f"callback={receiver.url}"))
            assert status == 400 and body["param"] == "callback"
        delivery = replace(FAST, callback_hosts=frozenset({"127.0.0.1"}))
        async with serve(config(delivery=delivery)) as server, asyncio.timeout(30):
            query = (
                f"callback={receiver.url}&callback_method=put&callback_interim_results=true"
                "&interim_results=true"
            )
            await stream_phrases(server.port, query, ["abc", "bad"])
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts))
    finally:
        await receiver.stop()
    assert set(receiver.methods) == {"PUT"}
    assert any(p["type"] == "Results" and not p["is_final"] for p in receiver.posts)
    assert words(receiver.finals()) == ["abc", "bad"]


async def test_webhook_rides_out_a_receiver_that_is_down_for_a_while() -> None:
    receiver = Receiver(fail_first=2)  # answers 503 twice once it is up
    delivery = replace(FAST, callback_url=receiver.url, callback_attempts=8)
    async with serve(config(delivery=delivery)) as server, asyncio.timeout(30):
        await stream_phrases(server.port, "", ["abc"], ["bad"])  # nothing listens yet: refused
        await asyncio.sleep(0.3)
        await receiver.start()
        try:
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts))
            retries = await metric(server.port, "streamer_webhook_retries_total")
            failed = await metric(
                server.port, "streamer_webhook_messages_total", kind="final", outcome="failed"
            )
        finally:
            await receiver.stop()
    assert words(receiver.finals()) == ["abc", "bad"]  # nothing lost, in order
    assert retries >= 3 and failed == 0


async def test_webhook_that_never_comes_back_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver()  # never started
    delivery = replace(FAST, callback_url=receiver.url, callback_attempts=3)
    caplog.set_level(logging.INFO, logger="streamer")
    async with serve(config(delivery=delivery)) as server, asyncio.timeout(30):
        sent = await stream_phrases(server.port, "", ["abc"], ["bad"])
        finals = len([m for m in sent if m.get("is_final")])
        state = server.app[STATE]
        async with asyncio.timeout(10):
            while await webhook_count(server.port, "final", "failed") < finals + 1:
                await asyncio.sleep(0.1)
        assert state.webhooks._queues == set()  # every queue finished
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == finals + 1 and all("not delivered after 3 attempt(s)" in e for e in errors)
    assert all(receiver.url not in e for e in errors)  # only the host is logged, never the URL


async def test_webhook_refusal_is_not_retried() -> None:
    receiver = Receiver(status=400)
    await receiver.start()
    delivery = replace(FAST, callback_url=receiver.url)
    try:
        async with serve(config(delivery=delivery)) as server, asyncio.timeout(30):
            await stream_phrases(server.port, "", ["abc"])
            async with asyncio.timeout(10):
                while (
                    await metric(
                        server.port, "streamer_webhook_messages_total", kind="final", outcome="failed"
                    )
                    < 2
                ):
                    await asyncio.sleep(0.05)
            retries = await metric(server.port, "streamer_webhook_retries_total")
    finally:
        await receiver.stop()
    assert receiver.attempts == 2 and retries == 0  # one final and the Metadata, once each


async def test_slow_webhook_never_holds_the_stream_up() -> None:
    """The socket client gets its finals at once while the receiver stalls every post."""
    stalled = asyncio.Event()

    class Stalling(Receiver):
        async def _handle(self, request: Any) -> Any:
            stalled.set()
            await asyncio.sleep(30)
            return await super()._handle(request)

    receiver = Stalling()
    await receiver.start()
    delivery = replace(FAST, callback_url=receiver.url, callback_timeout_s=20)
    try:
        async with serve(config(delivery=delivery)) as server, asyncio.timeout(15):
            sent = await stream_phrases(server.port, "", ["abc"], ["bad"], ["cafe"])
            assert final_words(sent) == ["abc", "bad", "cafe"]
            assert stalled.is_set()
    finally:
        await receiver.stop()


async def test_prerecorded_callback_answers_at_once_and_posts_the_result() -> None:
    from tests.test_server import _wav

    receiver = Receiver(secret="k")
    await receiver.start()
    delivery = replace(FAST, callback_hosts=frozenset({"127.0.0.1"}), callback_secret="k")
    try:
        async with serve(config(delivery=delivery)) as server, asyncio.timeout(30):
            body = _wav(utterances(["abc", "bad"], ["cafe"]))
            async with aiohttp.ClientSession() as http:
                url = f"{server.http}/v1/listen?callback={receiver.url}"
                async with http.post(url, data=body) as resp:
                    assert resp.status == 200
                    answer = await resp.json()
                await receiver.wait_for(lambda: bool(receiver.posts))
                refused = await http.post(f"{server.http}/v1/listen?callback=http://10.0.0.1/x", data=body)
                assert refused.status == 400 and (await refused.json())["param"] == "callback"
            assert server.app[STATE].active == 0 and not server.app[STATE].jobs
    finally:
        await receiver.stop()
    [result] = receiver.posts
    assert set(answer) == {"request_id"} and result["metadata"]["request_id"] == answer["request_id"]
    transcripts = [a["transcript"] for c in result["results"]["channels"] for a in c["alternatives"]]
    assert transcripts == ["abc bad cafe"] and receiver.bad_signatures == 0


async def test_tags_are_scoped_to_the_key_that_sent_them_unless_watch_all(tmp_path: Any) -> None:
    from streamer.cli import build_config

    keys = tmp_path / "keys"
    keys.write_text("alpha\nbeta\nsupervisor watch=all max_streams=2\n")
    cfg = build_config(["--api-keys-file", str(keys), "--model", "en=fake:tone"])
    assert cfg.api_keys_watch_all == frozenset({"supervisor"})
    cfg = replace(config(), api_keys=cfg.api_keys, api_keys_watch_all=cfg.api_keys_watch_all)
    async with serve(cfg) as server, asyncio.timeout(30):
        seen: dict[str, list[Json]] = {}
        viewers = {}
        for who in ("alpha", "beta", "supervisor"):
            headers = {"Authorization": f"Token {who}"}
            viewers[who] = await connect(watch_url(server.port, "tag=room"), additional_headers=headers)
            seen[who] = []
        tasks = [asyncio.create_task(watch_until_closed(v, seen[w])) for w, v in viewers.items()]
        async with connect(
            server.ws_url("tag=room"), additional_headers={"Authorization": "Token alpha"}
        ) as ws:
            await send_audio(ws, pcm16(utterances(["abc"])))
            await ws.send(json.dumps({"type": "CloseStream"}))
            await drain(ws)
        await asyncio.sleep(0.3)
        for v in viewers.values():
            await v.close()
        await asyncio.gather(*tasks)
    assert final_words(seen["alpha"]) == ["abc"] == final_words(seen["supervisor"])
    assert seen["beta"] == []  # another key's holder does not see alpha's "room"


def test_watch_all_must_name_a_configured_key() -> None:
    from streamer.errors import ConfigError

    with pytest.raises(ConfigError, match="watch=all"):
        replace(config(), api_keys=frozenset({"a"}), api_keys_watch_all=frozenset({"b"}))
