"""Signed webhook delivery of transcripts: never blocks transcription, never loses a final silently.

    webhooks = Webhooks(config.delivery, metrics); await webhooks.start()
    queue = webhooks.open(stream_id, url, "POST")   # one per stream that has a callback
    queue.put(text, must_deliver=True)             # finals and the closing Metadata; interims False
    queue.close()                                  # the stream ended: deliver what is queued, then stop
    await webhooks.drain(timeout); await webhooks.close()

Each stream's messages go out one at a time, in order, from a task of its own (a receiver sees finals in
transcript order). A failed post (connection error, timeout, 408/429/5xx) is retried with doubling
back-off; another 4xx is the receiver refusing and is not retried. Each queue is bounded: when full, the
oldest waiting interim makes room; when only must-deliver messages fill it, the new one is counted as
failed and logged. Every message ends in the `streamer_webhook_messages_total` counter as delivered,
failed or dropped (interims only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from streamer.config import DeliveryConfig
from streamer.errors import RequestError
from streamer.metrics import Metrics
from streamer.webhook_signing import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429})


class CallbackRefused(RequestError):
    """A client named a callback URL whose host this server may not post to."""


@dataclass(frozen=True)
class _Message:
    body: bytes
    must_deliver: bool


def _kind(message: _Message) -> str:
    return "final" if message.must_deliver else "interim"


class WebhookQueue:
    """The webhook deliveries of one stream (see the module docstring)."""

    def __init__(self, owner: Webhooks, stream_id: str, url: str, method: str) -> None:
        self.owner = owner
        self.stream_id = stream_id
        self.url = url
        self.method = method
        self._items: deque[_Message] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self.task: asyncio.Task[None] | None = None

    def put(self, text: str, must_deliver: bool) -> None:
        """Queue one message (never blocks); see the module docstring for what a full queue does."""
        message = _Message(text.encode(), must_deliver)
        if len(self._items) >= self.owner.config.callback_queue:
            victim = next((m for m in self._items if not m.must_deliver), None)
            if victim is not None:
                self._items.remove(victim)
                self.owner.count(victim, "dropped")
            elif must_deliver:
                self.owner.count(message, "failed")
                log.error(
                    "stream %s: webhook queue full (%d messages) while %s is unreachable: a final was not "
                    "delivered",
                    self.stream_id,
                    len(self._items),
                    _host(self.url),
                )
                return
            else:
                self.owner.count(message, "dropped")
                return
        self._items.append(message)
        self._ready.set()

    def close(self) -> None:
        """No more messages: the task delivers what is queued, then ends."""
        self._closed = True
        self._ready.set()

    @property
    def pending(self) -> int:
        return len(self._items)

    async def run(self) -> None:
        try:
            while True:
                while not self._items:
                    if self._closed:
                        return
                    self._ready.clear()
                    await self._ready.wait()
                message = self._items[0]
                await self.owner.deliver(self, message)
                self._items.popleft()
        except asyncio.CancelledError:
            for message in self._items:
                if message.must_deliver:
                    self.owner.count(message, "failed")
            if any(m.must_deliver for m in self._items):
                log.error(
                    "stream %s: %d webhook message(s) to %s not delivered before shutdown",
                    self.stream_id,
                    sum(m.must_deliver for m in self._items),
                    _host(self.url),
                )
            self._items.clear()
            raise


def _host(url: str) -> str:
    # Logs name the host only: a callback URL may carry a token in its path or query.
    return urlsplit(url).netloc or "?"


class Webhooks:
    """Every stream's webhook queue, one HTTP client session, the retry policy and the counters."""

    def __init__(self, config: DeliveryConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._queues: set[WebhookQueue] = set()

    def check_url(self, url: str) -> None:
        """Raise CallbackRefused unless a client may name `url` as its callback."""
        hosts = self.config.callback_hosts
        host = (urlsplit(url).hostname or "").lower()
        if "*" not in hosts and host not in hosts:
            raise CallbackRefused(
                f"callbacks to {host or 'that host'} are not allowed on this server "
                "(its operator lists the allowed hosts with --callback-hosts)",
                "callback",
            )

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.callback_timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)
        if self.config.callback_url is not None and self.config.callback_secret is None:
            log.warning("webhook posts are unsigned: set --callback-secret so receivers can verify them")

    def open(self, stream_id: str, url: str, method: str) -> WebhookQueue:
        """A new queue for one stream's messages, delivered by a task of its own."""
        queue = WebhookQueue(self, stream_id, url, method)
        queue.task = asyncio.get_running_loop().create_task(queue.run(), name=f"webhook-{stream_id}")
        self._queues.add(queue)
        queue.task.add_done_callback(lambda _: self._queues.discard(queue))
        return queue

    def count(self, message: _Message, outcome: str) -> None:
        self.metrics.webhook_messages.labels(_kind(message), outcome).inc()

    async def deliver(self, queue: WebhookQueue, message: _Message) -> None:
        """Post `message` with retries; counts the outcome. Returns when it is delivered or given up."""
        config = self.config
        delay = config.callback_backoff_s
        reason = ""
        for attempt in range(1, config.callback_attempts + 1):
            status = await self._post(queue, message)
            if status is not None and 200 <= status < 300:
                self.count(message, "delivered")
                return
            reason = f"HTTP {status}" if status is not None else "no answer"
            if status is not None and status < 500 and status not in RETRY_STATUSES:
                break  # the receiver refuses this message: retrying would not change its mind
            if attempt < config.callback_attempts:
                self.metrics.webhook_retries.inc()
                log.info(
                    "stream %s: webhook post to %s failed (%s), retry %d in %.1f s",
                    queue.stream_id,
                    _host(queue.url),
                    reason,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, config.callback_max_backoff_s)
        self.count(message, "failed")
        log.error(
            "stream %s: webhook %s to %s not delivered after %d attempt(s) (%s)",
            queue.stream_id,
            "final" if message.must_deliver else "interim",
            _host(queue.url),
            attempt,
            reason,
        )

    async def _post(self, queue: WebhookQueue, message: _Message) -> int | None:
        assert self._session is not None, "start() first"
        headers = {"Content-Type": "application/json", "X-Streamer-Stream-Id": queue.stream_id}
        if self.config.callback_secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.config.callback_secret, message.body)
        try:
            async with self._session.request(
                queue.method, queue.url, data=message.body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("stream %s: webhook post failed: %s", queue.stream_id, exc)
            return None

    async def drain(self, timeout: float) -> None:
        """Let the queues of ended streams deliver for up to `timeout` s, then cancel what is left."""
        tasks = [q.task for q in self._queues if q.task is not None]
        for queue in list(self._queues):
            queue.close()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        await self.drain(0)
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
