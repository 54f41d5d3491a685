"""Aligning per-track telephone audio into one interleaved stream (sans-I/O, one byte per sample).

Platforms that send caller and agent as separate messages (Twilio's `inbound`/`outbound` tracks) stamp
each with its place in the call. `TrackAligner(tracks, silence)`: `add(track, position, samples)` with
`position` in samples from the start of the call; `take()` returns the interleaved bytes ready so far;
`flush()` pads the shorter tracks with silence at the end. A gap in a track's positions is filled with
silence, so that channel times stay the call's times; audio that overlaps what a track already has is
trimmed. A track that falls more than `max_lag` samples behind the others is padded with silence up to
that lag, so the others are never held back longer (its audio that comes later still is trimmed).
"""

from __future__ import annotations

from streamer.errors import AudioFormatError


class TrackAligner:
    """Interleaves `tracks` one-byte-per-sample tracks (mu-law or A-law) in call time."""

    def __init__(self, tracks: int, silence: int, max_lag: int, max_gap: int) -> None:
        if tracks < 1:
            raise ValueError("at least one track")
        self.silence = silence
        self.max_lag = max_lag
        self.max_gap = max_gap
        self._pending = [bytearray() for _ in range(tracks)]
        self._position = [0] * tracks
        """Samples of each track accepted so far (taken or pending): the call time it has reached."""
        self.filled = 0
        """Samples of silence put into gaps, over all tracks."""
        self.trimmed = 0
        """Samples dropped as overlap (late or repeated audio)."""

    def add(self, track: int, position: int, samples: bytes) -> None:
        """Audio of `track` starting at sample `position` of the call; raises AudioFormatError when the
        position jumps more than `max_gap` samples ahead."""
        at = self._position[track]
        if position > at:
            gap = position - at
            if gap > self.max_gap:
                raise AudioFormatError(
                    f"track {track} jumps {gap} samples ahead (over the {self.max_gap}-sample limit)"
                )
            self._pad(track, gap)
            self.filled += gap
        elif position < at:
            overlap = min(at - position, len(samples))
            self.trimmed += overlap
            samples = samples[overlap:]
        self._pending[track] += samples
        self._position[track] += len(samples)
        lead = max(self._position)
        for other, reached in enumerate(self._position):
            if lead - reached > self.max_lag:
                # Hold the others back by at most max_lag: the late track may still catch up within it.
                self._pad(other, lead - self.max_lag - reached)
                self.filled += lead - self.max_lag - reached

    def _pad(self, track: int, count: int) -> None:
        self._pending[track] += bytes([self.silence]) * count
        self._position[track] += count

    def take(self) -> bytes:
        """The samples every track has, interleaved (track 0 first), removed from the pending buffers."""
        ready = min(len(p) for p in self._pending)
        if ready == 0:
            return b""
        if len(self._pending) == 1:
            single = bytes(self._pending[0])
            self._pending[0].clear()
            return single
        out = bytearray(ready * len(self._pending))
        for index, pending in enumerate(self._pending):
            out[index :: len(self._pending)] = pending[:ready]
            del pending[:ready]
        return bytes(out)

    def position(self, track: int) -> int:
        """The call time `track` has reached, in samples."""
        return self._position[track]

    def flush(self) -> bytes:
        """End of the call: pad every track to the longest, then take everything."""
        lead = max(self._position)
        for track, reached in enumerate(self._position):
            self._pad(track, lead - reached)
        return self.take()
