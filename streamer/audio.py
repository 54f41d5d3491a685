"""Decode wire audio (linear16, mulaw, alaw) to float32 and resample it to 16 kHz, in a streaming way.

Use `AudioDecoder(fmt)`: call `decode(chunk)` with raw bytes as they arrive (any sizes, odd counts too) and
`flush()` at end of stream; each returns one float32 16 kHz array per output channel (one when downmixing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

from streamer import SAMPLE_RATE
from streamer.errors import AudioFormatError

Encoding = Literal["linear16", "mulaw", "alaw"]
ENCODINGS: tuple[Encoding, ...] = ("linear16", "mulaw", "alaw")
MIN_RATE, MAX_RATE = 8000, 48000
MAX_CHANNELS = 8

FloatArray = npt.NDArray[np.float32]


def _mulaw_table() -> FloatArray:
    # ITU-T G.711 mu-law expansion, bytes are stored bit-inverted.
    u = ~np.arange(256, dtype=np.uint8)
    sign = (u & 0x80) != 0
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    value = np.where(sign, 0x84 - magnitude, magnitude - 0x84)
    return (value / 32768.0).astype(np.float32)


def _alaw_table() -> FloatArray:
    # ITU-T G.711 A-law expansion, even bits are inverted on the wire.
    a = np.arange(256, dtype=np.uint8) ^ 0x55
    sign = (a & 0x80) != 0
    exponent = (a >> 4) & 0x07
    mantissa = (a & 0x0F).astype(np.int32)
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent.astype(np.int32) - 1, 0),
    )
    value = np.where(sign, magnitude, -magnitude)
    return (value / 32768.0).astype(np.float32)


MULAW_TABLE = _mulaw_table()
ALAW_TABLE = _alaw_table()


def encode_mulaw(samples: FloatArray) -> bytes:
    """Encode float32 samples in [-1, 1] as G.711 mu-law (for tests and clients)."""
    pcm = np.clip(samples * 32768.0, -32768, 32767).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    mag = np.minimum(np.abs(pcm), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def encode_alaw(samples: FloatArray) -> bytes:
    """Encode float32 samples in [-1, 1] as G.711 A-law (for tests and clients)."""
    pcm = np.clip(samples * 32768.0, -32768, 32767).astype(np.int32) >> 3
    sign = np.where(pcm >= 0, 0x80, 0)
    mag = np.minimum(np.where(pcm >= 0, pcm, -pcm - 1), 0xFFF)
    exponent = np.where(mag < 32, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 4)
    mantissa = np.where(exponent == 0, mag >> 1, mag >> np.maximum(exponent, 1)) & 0x0F
    return (((sign | (exponent << 4) | mantissa) ^ 0x55) & 0xFF).astype(np.uint8).tobytes()


@dataclass(frozen=True)
class AudioFormat:
    """What the client declared: encoding, rate, channels, and whether channels are transcribed apart."""

    encoding: Encoding = "linear16"
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    multichannel: bool = False

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise AudioFormatError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise AudioFormatError(f"sample_rate must be {MIN_RATE}-{MAX_RATE} Hz, got {self.sample_rate}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise AudioFormatError(f"channels must be 1-{MAX_CHANNELS}, got {self.channels}")

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "linear16" else 1

    @property
    def output_channels(self) -> int:
        return self.channels if self.multichannel else 1

    def bytes_per_second(self) -> int:
        return self.bytes_per_sample * self.channels * self.sample_rate


class AudioDecoder:
    """Streaming decoder for one stream: bytes in, per-channel 16 kHz float32 out."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._frame_bytes = fmt.bytes_per_sample * fmt.channels
        self._carry = b""  # bytes of an incomplete multichannel sample frame, kept for the next chunk
        self._resamplers = [
            soxr.ResampleStream(fmt.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if fmt.sample_rate != SAMPLE_RATE
            else None
            for _ in range(fmt.output_channels)
        ]
        self.input_samples = 0
        """Sample frames (per channel) decoded so far, at the input rate."""

    def decode(self, chunk: bytes) -> list[FloatArray]:
        """Decode a chunk of any size; returns one 16 kHz array per output channel (possibly empty)."""
        data = self._carry + chunk
        usable = len(data) - len(data) % self._frame_bytes
        self._carry = data[usable:]
        return self._emit(self._to_float(data[:usable]), last=False)

    def flush(self) -> list[FloatArray]:
        """End of stream: drain the resamplers. A trailing partial sample frame is zero-padded, not lost."""
        pending = np.zeros((0,), dtype=np.float32)
        if self._carry:
            padded = self._carry + b"\x00" * (self._frame_bytes - len(self._carry))
            self._carry = b""
            pending = self._to_float(padded)
        return self._emit(pending, last=True)

    def _to_float(self, data: bytes) -> FloatArray:
        enc = self.format.encoding
        if enc == "linear16":
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        else:
            table = MULAW_TABLE if enc == "mulaw" else ALAW_TABLE
            samples = table[np.frombuffer(data, dtype=np.uint8)]
        return samples.astype(np.float32, copy=False)

    def _emit(self, interleaved: FloatArray, *, last: bool) -> list[FloatArray]:
        fmt = self.format
        frames = interleaved.reshape(-1, fmt.channels)
        self.input_samples += frames.shape[0]
        if fmt.multichannel:
            channels = [np.ascontiguousarray(frames[:, i]) for i in range(fmt.channels)]
        else:
            channels = [frames.mean(axis=1, dtype=np.float32) if fmt.channels > 1 else frames[:, 0]]
        out: list[FloatArray] = []
        for samples, resampler in zip(channels, self._resamplers, strict=True):
            if resampler is None:
                out.append(np.ascontiguousarray(samples, dtype=np.float32))
            else:
                out.append(resampler.resample_chunk(samples, last=last).astype(np.float32, copy=False))
        return out


def float_to_linear16(samples: FloatArray) -> bytes:
    """float32 in [-1, 1] to signed 16-bit little-endian bytes (for clients, tests and webrtcvad).

    Scaled by 32768 like the decoder, so 16-bit audio read as float survives the round trip bit-exactly.
    """
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()
