"""The microphone path with a fake sounddevice: no device, no PortAudio.

`FakeSoundDevice` mimics the parts of the sounddevice module the client uses; its InputStream calls the
callback from its own thread with int16 blocks, as PortAudio does.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from client import ClientOptions, run_client
from client.cli import main
from client.errors import SourceError
from client.sources import MicrophoneSource, describe_input_devices, resolve_device

DEVICES = [
    {"name": "HDMI Output", "max_input_channels": 0, "default_samplerate": 48000.0},
    {"name": "Built-in Microphone", "max_input_channels": 2, "default_samplerate": 44100.0},
    {"name": "USB Headset Mic", "max_input_channels": 1, "default_samplerate": 48000.0},
    {"name": "USB Webcam Mic", "max_input_channels": 1, "default_samplerate": 16000.0},
]


class FakeInputStream:
    def __init__(self, sd: FakeSoundDevice, callback: Any, **settings: Any) -> None:
        self.sd = sd
        self.callback = callback
        self.settings = settings
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        for block in self.sd.blocks:
            if self.stopped.is_set():
                return
            self.callback(block.reshape(-1, 1), len(block), None, None)
            if self.sd.interval:
                time.sleep(self.sd.interval)
        self.sd.delivered.set()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(2)

    def close(self) -> None:
        self.sd.closed = True


class FakeSoundDevice:
    """Stand-in for the sounddevice module; `blocks` are the int16 arrays its stream will deliver."""

    def __init__(self, blocks: list[np.ndarray], *, interval: float = 0.0, supports_16k: bool = True) -> None:
        self.blocks = blocks
        self.interval = interval
        self.supports_16k = supports_16k
        self.delivered = threading.Event()
        self.closed = False
        self.streams: list[FakeInputStream] = []
        self.default = SimpleNamespace(device=[1, -1])

    def InputStream(self, *, callback: Any, **settings: Any) -> FakeInputStream:
        stream = FakeInputStream(self, callback, **settings)
        self.streams.append(stream)
        return stream

    def query_devices(self, device: int | None = None, kind: str | None = None) -> Any:
        if device is None and kind is None:
            return DEVICES
        return DEVICES[1 if device is None else device]

    def check_input_settings(self, *, samplerate: int, **settings: Any) -> None:
        if samplerate == 16000 and not self.supports_16k:
            raise ValueError("Invalid sample rate")


def numbered_blocks(count: int, size: int = 800) -> list[np.ndarray]:
    return [np.full(size, i + 1, dtype=np.int16) for i in range(count)]


async def test_blocks_reach_the_websocket_in_order_and_stop_flushes_the_queue() -> None:
    blocks = numbered_blocks(30)
    sd = FakeSoundDevice(blocks, interval=0.001)
    received = bytearray()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                received.extend(message)
            elif json.loads(message)["type"] == "CloseStream":
                await ws.send(json.dumps({"type": "Metadata", "duration": len(received) / 32000}))
                await ws.close()

    out, err = io.StringIO(), io.StringIO()
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        source = MicrophoneSource(sd=sd, block_ms=50, queue_blocks=100, warn=lambda text: None)
        options = ClientOptions(url=f"ws://127.0.0.1:{port}")
        task = asyncio.create_task(run_client(options, source=source, stdout=out, stderr=err, stop=stop))
        assert await asyncio.to_thread(sd.delivered.wait, 5)
        stop.set()  # like Ctrl-C: what was captured is still sent, then CloseStream
        code = await asyncio.wait_for(task, 5)

    assert code == 0, err.getvalue()
    assert bytes(received) == b"".join(b.astype("<i2").tobytes() for b in blocks)
    settings = sd.streams[0].settings
    assert settings == {
        "samplerate": 16000,
        "blocksize": 800,
        "device": None,
        "channels": 1,
        "dtype": "int16",
    }
    assert sd.closed and source.dropped_blocks == 0


async def test_a_full_queue_drops_the_oldest_blocks_and_warns_once() -> None:
    blocks = numbered_blocks(10)
    sd = FakeSoundDevice(blocks)
    warnings: list[str] = []
    source = MicrophoneSource(sd=sd, queue_blocks=3, warn=warnings.append)
    async with source:
        # Nobody consumes: the network is "stalled" while all ten blocks are captured.
        assert await asyncio.to_thread(sd.delivered.wait, 5)
        source.stop()
        got = [block async for block in source.blocks()]
    assert got == [b.tobytes() for b in blocks[7:]]
    assert source.dropped_blocks == 7
    assert source.dropped_seconds == pytest.approx(0.35)
    assert len(warnings) == 1 and "dropping the oldest" in warnings[0]


async def test_a_device_without_16k_is_captured_at_its_rate_and_resampled() -> None:
    rate = 48000
    t = np.arange(rate) / rate
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    sd = FakeSoundDevice(list(tone.reshape(-1, 2400)), supports_16k=False)
    source = MicrophoneSource(sd=sd, device="headset")
    async with source:
        assert await asyncio.to_thread(sd.delivered.wait, 5)
        source.stop()
        out = b"".join([block async for block in source.blocks()])
    assert sd.streams[0].settings["samplerate"] == 48000
    assert sd.streams[0].settings["device"] == 2
    samples = np.frombuffer(out, dtype="<i2")
    assert abs(len(samples) - 16000) <= 16
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 16000 / len(samples) - 440) < 5


def test_device_is_chosen_by_index_or_name_substring() -> None:
    sd = FakeSoundDevice([])
    assert resolve_device(sd, None) is None
    assert resolve_device(sd, "3") == 3
    assert resolve_device(sd, "built-in") == 1
    assert resolve_device(sd, "Webcam") == 3
    with pytest.raises(SourceError, match="several input devices"):
        resolve_device(sd, "usb")
    with pytest.raises(SourceError, match="no input device matches"):
        resolve_device(sd, "bluetooth")
    with pytest.raises(SourceError, match="no input device with index 0"):
        resolve_device(sd, "0")  # an output-only device


def test_list_devices_prints_inputs_and_marks_the_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice([]))
    assert main(["--list-devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == describe_input_devices(FakeSoundDevice([]))
    assert len(lines) == 3
    assert lines[0].startswith("*   1  Built-in Microphone")
    assert not any("HDMI" in line for line in lines)


@pytest.fixture
def portaudio_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `sounddevice` that fails at import exactly like the real one without libportaudio2."""
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)


@pytest.mark.parametrize("argv", [["--lang", "en"], ["--list-devices"]])
def test_missing_portaudio_is_one_line_and_exit_2(
    portaudio_missing: None, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 9 has no server: the microphone is opened, and fails, before any connection is tried.
    code = main([*argv, "--url", "ws://127.0.0.1:9"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "libportaudio2" in err and "brew install portaudio" in err and "--file" in err


def test_missing_sounddevice_package_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # makes `import sounddevice` raise ImportError
    assert main(["--url", "ws://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install sounddevice" in err and "--file" in err
