"""Two-party telephone calls made of real Asterisk prompts (8 kHz), for the dialects' end-to-end tests.

`two_party_call()` gives each party's 8 kHz audio (prompts with pauses, the agent answering after the
caller), the prompt texts, and `offline(channel_audio)` gives the transcript one full pass of the built-in
model makes of the same audio: what each channel's streamed finals must equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamer.audio import MULAW_TABLE, encode_mulaw
from streamer.bench.telephone import INSTALL_HINT, telephone_prompts

RATE = 8000
CALLER = ("feature-not-avail-line", "vm-msgforwarded")
AGENT = ("privacy-incorrect", "vm-tocallnum")


@dataclass(frozen=True)
class Call:
    caller: np.ndarray
    """8 kHz float32, already through the mu-law codec once (as a phone network delivers it)."""
    agent: np.ndarray
    caller_text: str
    agent_text: str

    def mulaw(self, channel: int) -> bytes:
        return encode_mulaw(self.caller if channel == 0 else self.agent)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


@cache
def two_party_call() -> Call:
    """Caller: two prompts 1.5 s apart; agent: 1 s later, two prompts 1.5 s apart. Skips the test when the
    Asterisk prompts are not installed."""
    prompts = telephone_prompts()
    if prompts is None:
        pytest.skip(f"Asterisk telephone prompts not installed: {INSTALL_HINT}")
    by_name = {p.name: p for p in prompts}
    missing = [n for n in (*CALLER, *AGENT) if n not in by_name]
    if missing:
        pytest.skip(f"Asterisk prompts {missing} not found")

    def side(names: tuple[str, str], lead_s: float) -> tuple[np.ndarray, str]:
        parts = [_silence(lead_s)]
        for name in names:
            audio, rate = sf.read(str(by_name[name].path), dtype="float32")
            assert rate == RATE
            parts += [audio.astype(np.float32), _silence(1.5)]
        mono = np.concatenate(parts)
        coded = MULAW_TABLE[np.frombuffer(encode_mulaw(mono), np.uint8)]
        return coded, " ".join(by_name[n].transcript for n in names)

    caller, caller_text = side(CALLER, 0.5)
    agent, agent_text = side(AGENT, 1.5)
    length = max(len(caller), len(agent)) + RATE  # both sides end in a second of silence
    length += -length % 160  # whole 20 ms frames
    caller = np.pad(caller, (0, length - len(caller)))
    agent = np.pad(agent, (0, length - len(agent)))
    return Call(caller, agent, caller_text, agent_text)


@cache
def offline(channel_audio: bytes) -> str:
    """One full pass of the built-in model over 8 kHz mu-law audio, per VAD segment (streamer.transcribe)."""
    from streamer.engine import BUILTIN_EN, EngineOptions, load_engine
    from streamer.transcribe import transcribe_samples
    from streamer.vad import VadConfig

    decoded = MULAW_TABLE[np.frombuffer(channel_audio, np.uint8)]
    audio = soxr.resample(decoded, RATE, 16000, quality="HQ").astype(np.float32)
    engine = load_engine(BUILTIN_EN, EngineOptions(threads=1))  # the server's default decoder too
    try:
        return " ".join(r.text for r in transcribe_samples(engine, audio, VadConfig()) if r.text)
    finally:
        engine.close()
