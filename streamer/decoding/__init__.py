"""Decoding CTC log-probs into words beyond greedy: a lexicon and word-LM prefix beam search (pure logic).

`BeamDecoder(lexicon, blank_id=..., delimiter_id=..., options=BeamOptions())` decodes like
`streamer.ctc.greedy_words` (see `streamer.decoding.beam`); anything with the same `decode` method is a
`WordDecoder`, which `streamer.transcript.render_words` takes. An engine that offers one for its finals
sets `final_decoder` (see `final_decoder`).
"""

from __future__ import annotations

from typing import Protocol

from streamer.ctc import FloatArray
from streamer.decoding.beam import BeamDecoder, BeamOptions, BeamResult, BeamWord
from streamer.decoding.lexicon import Lexicon


class WordDecoder(Protocol):
    def decode(
        self, logprobs: FloatArray, *, frame_offset: int = 0, prev_token: int | None = None
    ) -> BeamResult: ...


def final_decoder(engine: object) -> WordDecoder | None:
    """The decoder an engine's finals use (its optional `final_decoder` attribute); None: greedy."""
    decoder: WordDecoder | None = getattr(engine, "final_decoder", None)
    return decoder


__all__ = ["BeamDecoder", "BeamOptions", "BeamResult", "BeamWord", "Lexicon", "WordDecoder", "final_decoder"]
