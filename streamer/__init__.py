"""streamer: real-time streaming speech recognition with overlapping-window CTC."""

__version__ = "0.1.0"

SAMPLE_RATE = 16000
"""Every model sees 16 kHz mono float32; audio.py resamples everything else to it."""
