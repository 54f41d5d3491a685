"""One client run, from opening the input to writing caption files.

`await run_client(options)` returns the exit code; `await run_stream(options)` returns a `RunReport` with
the exit code, the final results, the transcript and the Metadata (for in-process callers and tests).

Exit codes: 0 done (also after a graceful Ctrl-C), 1 server or network failure, 2 bad options or unusable
input (no PortAudio, unreadable file), 130 interrupted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from websockets.exceptions import ConnectionClosed

from client.captions import write_captions
from client.connection import StreamOutcome, StreamSession, connect_listen
from client.errors import ClientError, ConnectError, RejectedError, StreamError, UsageError
from client.messages import Result, decode, error_description, message_type, parse_result
from client.options import ClientOptions
from client.resume import RESUME_CLOSE_CODES, ResumableFeed
from client.sources import BYTES_PER_SECOND, AudioSource, FileSource, MicrophoneSource
from client.terminal import Console
from client.urls import listen_url, watch_url


@dataclass
class RunReport:
    """What one run produced: exit code, final results in order, their transcript, the closing Metadata."""

    exit_code: int
    finals: list[Result] = field(default_factory=list)
    transcript: str = ""
    metadata: dict[str, Any] | None = None


class CaptionSink:
    """Turns server messages into terminal output and keeps the finals for the transcript and captions."""

    def __init__(
        self,
        console: Console,
        *,
        json_output: bool = False,
        interim: bool = True,
        commit_finals: bool = True,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.console = console
        self.on_message = on_message
        self.json_output = json_output
        self.interim = interim
        self.commit_finals = commit_finals
        self.finals: list[Result] = []
        self.errors: list[str] = []

    def handle(self, text: str) -> None:
        """One text frame from the server."""
        if self.on_message is not None:
            self.on_message(text)
        if self.json_output:
            self.console.line(text)  # exactly as received, so pipes see the server's own bytes
        try:
            data = decode(text)
        except ValueError:
            if not self.json_output:
                self.console.warn(f"warning: ignoring a server message that is not JSON: {text[:80]!r}")
            return
        kind = message_type(data)
        if kind == "Results":
            self._result(parse_result(data))
        elif kind == "Error":
            # Reported with the close that follows, so the user gets one line saying what went wrong.
            self.errors.append(error_description(data))

    def _result(self, result: Result) -> None:
        if result.is_final:
            self.finals.append(result)
            if self.json_output:
                return
            if result.transcript and self.commit_finals:
                self.console.final(result.transcript)
            else:
                self.console.partial("")
        elif self.interim and not self.json_output:
            self.console.partial(result.transcript)

    @property
    def transcript(self) -> str:
        """The whole transcript: the finals in order (by the protocol's invariant, nothing repeated)."""
        return " ".join(r.transcript for r in self.finals if r.transcript)


def make_source(options: ClientOptions, console: Console) -> AudioSource:
    if options.file is not None:
        return FileSource(
            options.file, frame_ms=options.file_frame_ms, speed=options.speed, pace=options.pace
        )
    return MicrophoneSource(
        device=options.device,
        block_ms=options.mic_block_ms,
        queue_blocks=options.mic_queue_blocks,
        warn=console.warn,
    )


class _Interrupts:
    """Ctrl-C policy: the first press ends the input gracefully once streaming, any other press aborts."""

    def __init__(self, task: asyncio.Task[Any], source: AudioSource, console: Console) -> None:
        self.task = task
        self.source = source
        self.console = console
        self.streaming = False
        self.presses = 0
        self.aborted = False

    def __call__(self) -> None:
        self.presses += 1
        if self.presses == 1 and self.streaming:
            self.console.warn("stopping: waiting for the last results (Ctrl-C again to quit now)")
            self.source.stop()
            return
        self.aborted = True
        self.task.cancel()


@contextlib.contextmanager
def _sigint_handler(interrupts: _Interrupts, enabled: bool) -> Iterator[None]:
    """Route SIGINT to `interrupts` while the stream runs (main thread, Unix loops only)."""
    loop = asyncio.get_running_loop()
    installed = False
    if enabled and threading.current_thread() is threading.main_thread():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, interrupts)
            installed = True
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


async def _watch_stop(stop: asyncio.Event, interrupts: _Interrupts) -> None:
    await stop.wait()
    interrupts.presses = max(interrupts.presses, 1)
    interrupts.source.stop()


async def run_client(
    options: ClientOptions,
    *,
    source: AudioSource | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stop: asyncio.Event | None = None,
    handle_sigint: bool = False,
) -> int:
    """Stream one input to the server and render the results; returns the exit code (see the module doc).

    `source` replaces the file/microphone input (tests, other programs); `stop`, when set, ends the input
    gracefully like a first Ctrl-C; `handle_sigint` installs that Ctrl-C behaviour (the CLI does).
    """
    if options.watch is not None:
        return await run_watch(options, stdout=stdout, stderr=stderr, stop=stop, handle_sigint=handle_sigint)
    report = await run_stream(
        options, source=source, stdout=stdout, stderr=stderr, stop=stop, handle_sigint=handle_sigint
    )
    return report.exit_code


async def run_watch(
    options: ClientOptions,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stop: asyncio.Event | None = None,
    handle_sigint: bool = False,
) -> int:
    """Receive only (`--watch TAG`): captions of the streams sent with that tag until Ctrl-C (or `stop`)
    or the server closes. 0 when the watch ended normally (also on a server restart), 1 on errors."""
    assert options.watch is not None
    console = Console(stdout, stderr, partials=options.interim and not options.json_output, progress=False)
    sink = CaptionSink(console, json_output=options.json_output, interim=options.interim)
    try:
        url = watch_url(options.url, options.watch)
    except ValueError as exc:
        console.warn(f"error: {exc}")
        return UsageError.exit_code
    try:
        ws = await connect_listen(url, options.api_key, open_timeout=options.open_timeout)
    except ClientError as exc:
        console.warn(f"error: {exc}")
        return exc.exit_code
    ended_here = asyncio.Event()
    closing: set[asyncio.Future[None]] = set()

    def end() -> None:
        ended_here.set()
        closing.add(asyncio.ensure_future(ws.close()))  # held until the loop below sees the close

    loop = asyncio.get_running_loop()
    if handle_sigint:
        loop.add_signal_handler(signal.SIGINT, end)
    waiter = asyncio.create_task(stop.wait()) if stop is not None else None
    if waiter is not None:
        waiter.add_done_callback(lambda _: end())
    try:
        async for text in ws:
            if isinstance(text, str):
                sink.handle(text)
    except ConnectionClosed:
        pass
    finally:
        if handle_sigint:
            loop.remove_signal_handler(signal.SIGINT)
        if waiter is not None:
            waiter.cancel()
    console.finish()
    code, reason = ws.close_code, ws.close_reason
    if ended_here.is_set() or code in (1000, 1001, 1012):
        if code == 1012:
            console.warn("the server is shutting down: the watch ended")
        return 0
    console.warn(f"error: the server closed the watch ({code}{': ' + reason if reason else ''})")
    return 1


async def _stream_with_resume(
    options: ClientOptions,
    url: str,
    source: AudioSource,
    sink: CaptionSink,
    console: Console,
    interrupts: _Interrupts,
) -> StreamOutcome:
    """One stream, over as many connections as it takes: after a server restart or a dropped connection
    it reconnects with back-off and resumes (client.resume), within `options.resume_attempts` in a row."""
    feed = ResumableFeed(source, options.resume_buffer_s)
    feed.start()

    def on_text(text: str) -> None:
        feed.observe(text)
        sink.handle(text)

    next_url, attempts = url, 0
    try:
        while True:
            try:
                ws = await connect_listen(next_url, options.api_key, open_timeout=options.open_timeout)
            except (ConnectError, RejectedError) as exc:
                busy = isinstance(exc, RejectedError) and exc.status in (502, 503, 504)
                if attempts == 0 or not (busy or isinstance(exc, ConnectError)):
                    raise
                if attempts >= options.resume_attempts:
                    raise StreamError(
                        f"could not resume the stream after {attempts} attempts: {exc}"
                    ) from None
                attempts += 1
                await asyncio.sleep(_backoff(attempts))
                continue
            interrupts.streaming = True
            session = StreamSession(
                ws,
                feed,
                on_text,
                on_sent=lambda _sent: console.progress(feed.sent_bytes / BYTES_PER_SECOND, source.duration_s),
                close_timeout=options.close_timeout,
            )
            try:
                outcome = await session.run()
            except StreamError as exc:
                code = session.outcome.close_code
                if code not in RESUME_CLOSE_CODES or not feed.can_resume() or interrupts.aborted:
                    raise
                if attempts >= options.resume_attempts:
                    raise StreamError(f"{exc} (gave up after {attempts} attempts to resume)") from None
                attempts = 0 if session.outcome.received else attempts
                attempts += 1
                next_url, lost = feed.resume_url(url)
                console.finish()
                console.warn(f"{exc}: resuming the stream")
                if lost:
                    console.warn(f"warning: {lost:.1f} s of audio were lost (beyond --resume-buffer)")
                await asyncio.sleep(_backoff(attempts))
                continue
            outcome.sent_bytes = feed.sent_bytes
            return outcome
    finally:
        await feed.close()


def _backoff(attempt: int) -> float:
    """Seconds before reconnection `attempt` (1, 2, ...): 0.25 s doubling up to 4 s."""
    return float(min(4.0, 0.25 * 2 ** (attempt - 1)))


async def run_stream(
    options: ClientOptions,
    *,
    source: AudioSource | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    console: Console | None = None,
    stop: asyncio.Event | None = None,
    handle_sigint: bool = False,
    on_message: Callable[[str], None] | None = None,
) -> RunReport:
    """`run_client` returning a RunReport; `on_message` sees every server text frame as received."""
    console = console or Console(
        stdout,
        stderr,
        partials=options.interim and not options.json_output,
        # Explicit --progress/--no-progress wins; by default only a file (known length) shows a bar.
        progress=options.progress if options.progress is not None else (None if options.file else False),
    )
    file_mode = options.file is not None
    # A file's transcript is printed whole at the end; line-by-line finals are for watching, or for
    # piping a microphone, whose stream has no end to wait for.
    sink = CaptionSink(
        console,
        json_output=options.json_output,
        interim=options.interim,
        commit_finals=console.out_tty or not file_mode,
        on_message=on_message,
    )
    metadata: dict[str, Any] | None = None
    code = 0
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("run_client must run inside an asyncio task")
    try:
        url = listen_url(
            options.url,
            language=options.language,
            model=options.model,
            interim=options.interim,
            utterance_end_ms=options.utterance_end_ms,
            tag=options.tag,
            resumable=options.resume_buffer_s > 0,
        )
    except ValueError as exc:
        console.warn(f"error: {exc}")
        return RunReport(UsageError.exit_code)
    source = source or make_source(options, console)
    interrupts = _Interrupts(task, source, console)
    watcher = asyncio.create_task(_watch_stop(stop, interrupts)) if stop is not None else None
    try:
        with _sigint_handler(interrupts, handle_sigint):
            async with source:
                outcome = await _stream_with_resume(options, url, source, sink, console, interrupts)
                metadata = outcome.metadata
                console.progress(outcome.sent_seconds, source.duration_s, force=True)
                if not outcome.close_sent and interrupts.presses == 0:
                    console.finish()
                    console.warn("warning: the server ended the stream before all audio was sent")
    except ClientError as exc:
        console.finish()
        message = str(exc)
        extra = [e for e in sink.errors if e not in message]
        console.warn(f"error: {message}" + (f" ({'; '.join(extra)})" if extra else ""))
        code = exc.exit_code
    except asyncio.CancelledError:
        if not interrupts.aborted:
            raise
        task.uncancel()
        console.finish()
        console.warn("interrupted")
        code = 130
    finally:
        if watcher is not None:
            watcher.cancel()
    console.finish()
    if code == 0 and sink.errors:
        console.warn(f"error: the server reported: {'; '.join(sink.errors)}")
        code = 1
    dropped = getattr(source, "dropped_blocks", 0)
    if dropped:
        seconds = getattr(source, "dropped_seconds", 0.0)
        console.warn(
            f"warning: dropped {dropped} microphone blocks ({seconds:.1f} s) while the network lagged"
        )
    try:
        if options.srt is not None or options.vtt is not None:
            write_captions(sink.finals, srt=options.srt, vtt=options.vtt)
    except OSError as exc:
        console.warn(f"error: cannot write caption file: {exc}")
        code = code or 1
    if file_mode and code == 0 and not options.json_output and sink.transcript:
        if console.out_tty:
            console.warn("-- transcript --")  # the live captions above already scrolled by on this screen
        console.line(sink.transcript)
    return RunReport(code, sink.finals, sink.transcript, metadata)
