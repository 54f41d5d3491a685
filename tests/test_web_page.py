"""Tier 5: the web page in a real browser (Debian's Chromium, driven by Playwright) against a real server
process: the fake capture device plays a real recording as the microphone."""

from __future__ import annotations

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
    from streamer.engine.hama_engine import HamaEngine
    from streamer.transcribe import read_audio, transcribe_samples
    from streamer.vad import VadConfig

    engine = HamaEngine(replicas=1)
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
    assert [c[0] for c in cues] == sorted(c[0] for c in cues)
    assert not errors
