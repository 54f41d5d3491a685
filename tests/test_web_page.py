"""Tier 5: the web page in a real browser (Debian's Chromium, driven by Playwright) against a real server
process: the fake capture device plays a real recording as the microphone."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jiwer
import pytest
import pytest_asyncio

from streamer.bench.soak import ServerProcess
from tests.browser import browser_args, chromium_path, fake_microphone_file

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
pytestmark = pytest.mark.slow

OUT = Path(__file__).resolve().parent / "output"


def offline_text(path: Path) -> str:
    from streamer.engine import BUILTIN_EN, EngineOptions, load_engine
    from streamer.transcribe import read_audio, transcribe_samples
    from streamer.vad import VadConfig

    engine = load_engine(BUILTIN_EN, EngineOptions(threads=1))  # the server's default decoder too
    try:
        return " ".join(r.text for r in transcribe_samples(engine, read_audio(path), VadConfig()) if r.text)
    finally:
        engine.close()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[ServerProcess]:
    process = ServerProcess([])
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        assert lines[0].isdigit(), block
        m = re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})", lines[1])
        assert m, lines[1]
        v = [int(x) for x in m.groups()]
        start = v[0] * 3600 + v[1] * 60 + v[2] + v[3] / 1000
        end = v[4] * 3600 + v[5] * 60 + v[6] + v[7] / 1000
        assert end > start
        cues.append((start, end, " ".join(lines[2:])))
    return cues


async def test_microphone_captions_match_the_offline_transcript(
    server: ServerProcess, eval_data: Path, tmp_path: Path
) -> None:
    # A clean LibriSpeech clip: the built-in model reads it the same way whatever shifts and resamplings
    # the browser's capture path adds (jfk.wav's crowd noise makes it change its mind between runs).
    recording = eval_data / "en" / "ls_2412-153948-0000.wav"
    microphone = fake_microphone_file(recording, tmp_path / "mic.wav")
    OUT.mkdir(exist_ok=True)
    received: list[dict[str, Any]] = []
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(chromium_path()), args=browser_args(microphone))
        page = await browser.new_page(accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "websocket",
            lambda ws: ws.on("framereceived", lambda frame: received.append(json.loads(frame))),
        )
        await page.goto(server.url + "/")
        await page.wait_for_function("document.querySelector('#language').options.length > 0")
        await page.fill("#tag", "main-room")
        watch_tab = await browser.new_page()  # a second tab follows the same captions in the watch view
        await watch_tab.goto(server.url + "/watch?tag=main-room&lines=50")
        await watch_tab.wait_for_timeout(500)
        await page.click("#start")
        # The fake microphone plays 3 s of silence, the 11.7 s clip, then silence: let it play out.
        await page.wait_for_timeout(17_000)
        await page.screenshot(path=str(OUT / "page-main.png"))
        await page.click("#stop")
        await page.wait_for_function("document.querySelector('#status').textContent === 'Stopped.'")
        shown = await page.locator("#captions p.paragraph").all_text_contents()
        async with page.expect_download() as download_info:
            await page.click("#save-srt")
        download = await download_info.value
        srt = Path(await download.path()).read_text()
        watched = " ".join(await watch_tab.locator("#lines p:not(.interim)").all_text_contents())
        await watch_tab.screenshot(path=str(OUT / "watch-tab.png"))
        await browser.close()
    page_text = " ".join(" ".join(shown).split())
    reference = offline_text(recording)
    page_wer = jiwer.wer(reference, page_text)
    print(f"page vs offline WER {page_wer:.3f}\npage:    {page_text}\noffline: {reference}")
    assert page_wer <= 0.10, (page_text, reference)
    kinds = [("final" if m["is_final"] else "interim") for m in received if m.get("type") == "Results"]
    assert "interim" in kinds and kinds.index("interim") < kinds.index("final")
    assert received[-1]["type"] == "Metadata"
    cues = parse_srt(srt)
    assert " ".join(text for *_, text in cues) == page_text
    assert " ".join(watched.split()) == page_text
    assert [c[0] for c in cues] == sorted(c[0] for c in cues)
    assert not errors


# ---- with the tone engine: deterministic words, quick servers ----


def tone_file(
    path: Path, *phrases: list[str], lead_s: float = 3.0, gap_s: float = 1.0, tail_s: float = 3.0
) -> Path:
    """Speech the fake:tone model reads as `phrases`, as a fake-microphone or drop-in file."""
    import numpy as np
    import soundfile as sf

    from streamer.engine.fake import tone_phrase

    parts = [np.zeros(int(lead_s * 16000), np.float32)]
    for i, words in enumerate(phrases):
        parts += [tone_phrase(words, seed=i), np.zeros(int(gap_s * 16000), np.float32)]
    parts.append(np.zeros(int(tail_s * 16000), np.float32))
    sf.write(str(path), np.concatenate(parts), 16000, subtype="PCM_16")
    return path


@pytest_asyncio.fixture
async def tone_server() -> AsyncIterator[ServerProcess]:
    process = ServerProcess(["--model", "en=fake:tone"])
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def launch(p: Any, microphone: Path | None = None) -> Any:
    return await p.chromium.launch(executable_path=str(chromium_path()), args=browser_args(microphone))


async def captioning(p: Any, microphone: Path, url: str, heard: str) -> tuple[Any, Any]:
    """A browser whose page at `url` captions the fake microphone, once a final shows `heard`."""
    browser = await launch(p, microphone)
    page = await browser.new_page()
    await page.goto(url + "/")
    await page.wait_for_function("document.querySelector('#language').options.length > 0")
    await page.click("#start")
    finals = "[...document.querySelectorAll('#captions .paragraph')]"
    shown = f"{finals}.some((p) => p.textContent.includes({heard!r}))"
    await page.wait_for_function(shown, timeout=20_000)
    return browser, page


async def final_text(page: Any) -> str:
    return " ".join(" ".join(await page.locator("#captions p.paragraph").all_text_contents()).split())


async def test_dropped_recording_is_captioned_and_cues_match_the_python_client(
    tone_server: ServerProcess, tmp_path: Path
) -> None:
    recording = tone_file(tmp_path / "talk.wav", ["abc", "bad"], ["cafe", "dab"], lead_s=0.3, tail_s=1.0)
    data = recording.read_bytes()
    async with playwright_api.async_playwright() as p:
        browser = await launch(p)
        page = await browser.new_page(accept_downloads=True)
        await page.goto(tone_server.url + "/")
        await page.wait_for_function("document.querySelector('#language').options.length > 0")
        await page.uncheck("#realtime")  # as fast as possible
        await page.evaluate(
            """async (bytes) => {
                const file = new File([new Uint8Array(bytes)], "talk.wav", {type: "audio/wav"});
                const transfer = new DataTransfer();
                transfer.items.add(file);
                const drop = new DragEvent("drop", {dataTransfer: transfer, bubbles: true});
                document.getElementById("drop").dispatchEvent(drop);
            }""",
            list(data),
        )
        await page.wait_for_function(
            "document.querySelector('#status').textContent === 'Stopped.'", timeout=20_000
        )
        assert await final_text(page) == "abc bad cafe dab"
        assert await page.locator("#progress").evaluate("p => p.value") == 1
        # The page's cue module and the terminal client's give the same SRT for the same words.
        words = [
            {"word": w, "start": s, "end": e}
            for w, s, e in [("one", 0.0, 0.4), ("two", 0.5, 0.9), ("three", 3.0, 3.3), ("four", 3.4, 9.0)]
            + [(f"w{i}", 9.0 + i * 0.3, 9.2 + i * 0.3) for i in range(20)]
        ]
        load = "const m = await import('/static/js/cues.js'); const cues = m.buildCues(words);"
        js_srt = await page.evaluate(f"async (words) => {{ {load} return m.toSrt(cues); }}", words)
        js_vtt = await page.evaluate(f"async (words) => {{ {load} return m.toVtt(cues); }}", words)
        await browser.close()
    from client.captions import build_cues, to_srt, to_vtt
    from client.messages import Word

    cues = build_cues([Word(w["word"], w["start"], w["end"]) for w in words])
    assert js_srt == to_srt(cues) and js_vtt == to_vtt(cues)


async def test_watch_view_follows_a_stream_sent_by_the_terminal_client(
    tone_server: ServerProcess, tmp_path: Path
) -> None:
    import subprocess
    import sys

    recording = tone_file(tmp_path / "talk.wav", ["abc", "bad"], ["cafe"], lead_s=0.3, tail_s=1.0)
    OUT.mkdir(exist_ok=True)
    async with playwright_api.async_playwright() as p:
        browser = await launch(p)
        page = await browser.new_page(viewport={"width": 960, "height": 300})
        await page.goto(tone_server.url + "/watch?tag=stage&lines=2&overlay=1&size=40")
        await page.wait_for_timeout(500)  # the watcher is connected before the stream starts
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "client",
            "--url",
            tone_server.url,
            "--file",
            str(recording),
            "--tag",
            "stage",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await client.communicate()
        assert client.returncode == 0, err
        await page.wait_for_function(
            "document.querySelector('#lines').textContent.includes('cafe')", timeout=10_000
        )
        lines = await page.locator("#lines p").all_text_contents()
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        await page.screenshot(path=str(OUT / "watch-overlay.png"))
        await browser.close()
    assert lines == ["abc bad", "cafe"] and out.decode().strip() == "abc bad cafe"
    assert background == "rgba(0, 0, 0, 0)"  # transparent: an OBS browser source shows the video behind


async def test_wrong_key_and_busy_server_are_explained(tmp_path: Path) -> None:
    microphone = tone_file(tmp_path / "mic.wav", ["abc"])
    server = ServerProcess(["--model", "en=fake:tone", "--api-key", "right-key", "--max-streams", "1"])
    await server.start()
    try:
        async with playwright_api.async_playwright() as p:
            browser = await launch(p, microphone)
            page = await browser.new_page()
            await page.goto(server.url + "/")
            await page.wait_for_function("!document.querySelector('#key-field').hidden")
            assert await page.text_content("#status") == "This server needs an API key."
            await page.fill("#key", "wrong-key")
            await page.dispatch_event("#key", "change")
            await page.wait_for_function(
                "document.querySelector('#status').textContent.includes('not accepted')"
            )
            await page.fill("#key", "right-key")
            await page.dispatch_event("#key", "change")
            await page.wait_for_function("document.querySelector('#language').options.length > 0")
            # Another client holds the only stream slot: the page says the server is busy and counts down.
            from websockets.asyncio.client import connect

            holder = await connect(server.ws_url(), additional_headers={"Authorization": "Token right-key"})
            await page.click("#start")
            await page.wait_for_function(
                "/busy.*Retrying in \\d+ s/.test(document.querySelector('#status').textContent)",
                timeout=10_000,
            )
            await holder.close()
            await page.wait_for_function(
                "['Listening…', 'Reconnected.'].includes(document.querySelector('#status').textContent)",
                timeout=15_000,
            )
            await browser.close()
    finally:
        await server.stop()


async def test_server_killed_mid_stream_is_reconnected_and_captions_kept(tmp_path: Path) -> None:
    import signal

    from tests.receivers import free_port

    microphone = tone_file(
        tmp_path / "mic.wav", ["abc", "bad"], ["cafe"], ["dab", "face"], gap_s=2.0, tail_s=8.0
    )
    port = free_port()
    args = ["--model", "en=fake:tone"]
    first = ServerProcess(args)
    first.args[first.args.index("--port") + 1] = str(port)
    await first.start()
    async with playwright_api.async_playwright() as p:
        browser, page = await captioning(p, microphone, first.url, "bad")
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        await page.wait_for_function(
            "/lost|Reconnecting|reached/.test(document.querySelector('#status').textContent)", timeout=10_000
        )
        shown_while_down = await final_text(page)
        second = ServerProcess(args)
        second.args[second.args.index("--port") + 1] = str(port)
        await second.start()
        try:
            await page.wait_for_function(
                "document.querySelector('#status').textContent === 'Reconnected.'", timeout=20_000
            )
            await page.wait_for_function(
                "document.querySelector('#captions').textContent.includes('face')", timeout=20_000
            )
            after = await final_text(page)
            await browser.close()
        finally:
            await second.stop()
    assert shown_while_down.startswith("abc") and after.startswith(shown_while_down)


async def test_server_restart_mid_stream_is_resumed_without_losing_or_repeating_words(tmp_path: Path) -> None:
    from tests.receivers import free_port

    phrases = (["abc", "bad"], ["cafe"], ["dab", "face"], ["bead", "fade"])
    microphone = tone_file(tmp_path / "mic.wav", *phrases, gap_s=1.5, tail_s=8.0)
    port = free_port()
    args = ["--model", "en=fake:tone", "--drain-timeout", "0", "--port", str(port)]
    secret = {"STREAMER_RESUME_SECRET": "page-resume-test"}
    first = ServerProcess(args, env=secret)
    await first.start()
    async with playwright_api.async_playwright() as p:
        browser, page = await captioning(p, microphone, first.url, "cafe")
        code = await first.stop()  # SIGTERM: no drain, the stream is handed over with 1012
        assert code == 0
        second = ServerProcess(args, env=secret)
        await second.start()
        try:
            await page.wait_for_function(
                "document.querySelector('#status').textContent.startsWith('Reconnected: the stream goes on')",
                timeout=20_000,
            )
            await page.wait_for_function(
                "document.querySelector('#captions').textContent.includes('fade')", timeout=30_000
            )
            await page.click("#stop")
            await page.wait_for_function("document.querySelector('#status').textContent === 'Stopped.'")
            words = await page.evaluate(
                "window.streamerPage.state.captions.words().map((w) => [w.word, w.start])"
            )
            await browser.close()
        finally:
            await second.stop()
    resumed = [line for line in second.log_lines if "resumes stream" in line]
    assert len(resumed) == 1, second.log_lines
    assert [w for w, _ in words] == [w for phrase in phrases for w in phrase], words
    starts = [t for _, t in words]
    assert starts == sorted(starts) and starts[-1] > 8.0, "times of the whole stream, across the restart"


async def test_denied_microphone_is_explained_and_own_origin_always_allowed(
    tone_server: ServerProcess, tmp_path: Path
) -> None:
    async with playwright_api.async_playwright() as p:
        # No fake-UI flag: the permission prompt is dismissed, as when a user clicks "Block".
        browser = await p.chromium.launch(
            executable_path=str(chromium_path()), args=["--use-fake-device-for-media-stream"]
        )
        page = await browser.new_page()
        await page.goto(tone_server.url + "/")
        await page.wait_for_function("document.querySelector('#language').options.length > 0")
        await page.click("#start")
        await page.wait_for_function("document.querySelector('#status').textContent.includes('permission')")
        assert await page.locator("#status.error").count() == 1
        assert not await page.is_disabled("#start")
        await browser.close()
    # Origins restricted to another site: the server's own page still works (same origin).
    server = ServerProcess(["--model", "en=fake:tone", "--allowed-origin", "https://captions.example.com"])
    await server.start()
    try:
        async with playwright_api.async_playwright() as p:
            browser = await launch(p, tone_file(tmp_path / "mic.wav", ["abc"], tail_s=2.0))
            page = await browser.new_page()
            await page.goto(server.url + "/")
            await page.wait_for_function("document.querySelector('#language').options.length > 0")
            await page.click("#start")
            await page.wait_for_function(
                "document.querySelector('#captions .paragraph')?.textContent.includes('abc')", timeout=15_000
            )
            await browser.close()
    finally:
        await server.stop()
