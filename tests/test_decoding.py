"""Tier 1 (pure logic): the lexicon beam search on hand-made log-probs; tier 2: finals of a session use it."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.audio import AudioFormat, float_to_linear16
from streamer.batcher import Batcher, BatcherConfig
from streamer.ctc import greedy_words
from streamer.decoding import BeamDecoder, BeamOptions, BeamResult, KeytermTrie, Lexicon, final_decoder
from streamer.engine.fake import EnergyDetector, ToneEngine
from streamer.runner import StreamRunner
from streamer.session import Session, StreamingConfig
from streamer.stream import Stream
from streamer.transcribe import transcribe_samples
from streamer.transcript import Transcript, render_words
from streamer.vad import VadConfig
from tests.sessions import WORDS, finals, run_session, speech

BLANK, WB, A, B, C, D = range(6)
VOCAB = 6


def frames(*rows: dict[int, float]) -> np.ndarray:
    """Log-probs of frames given as {token: probability}; other tokens share a tiny rest."""
    out = []
    for row in rows:
        p = np.full(VOCAB, 1e-4)
        for tok, prob in row.items():
            p[tok] = prob
        out.append(np.log(p / p.sum()))
    return np.array(out, dtype=np.float32)


def lexicon(*entries: tuple[str, list[int], float]) -> Lexicon:
    lex = Lexicon()
    for word, units, log10p in entries:
        lex.add(word, units, log10p)
    return lex


def decoder(lex: Lexicon, **options: float) -> BeamDecoder:
    return BeamDecoder(lex, blank_id=BLANK, delimiter_id=WB, options=BeamOptions(**options))  # type: ignore[arg-type]


def test_lexicon_keeps_the_likelier_homophone_and_looks_ahead() -> None:
    lex = lexicon(("too", [A, B], -4.0), ("to", [A, B], -2.0), ("tab", [A, B, C], -3.0))
    assert len(lex) == 2
    assert lex.words[lex.find([A, B])] == "to"
    assert lex.find([A]) == -1 and lex.find([C]) == -1
    node = lex.children[0][A]
    assert math.isclose(lex.lookahead[node], -2.0 * math.log(10), rel_tol=1e-6)


def test_beam_with_lexicon_corrects_what_greedy_gets_wrong() -> None:
    # "c a b": the middle frame narrowly prefers b, so greedy hears "c b"; the lexicon knows "cab".
    lp = frames({C: 0.9}, {BLANK: 0.9}, {B: 0.5, A: 0.45}, {B: 0.9}, {BLANK: 0.99}, {WB: 0.9}, {BLANK: 0.999})
    greedy = greedy_words(lp, blank_id=BLANK, delimiter_id=WB).words
    assert [w.tokens for w in greedy] == [(C, B)]
    result = decoder(lexicon(("cab", [C, A, B], -3.0))).decode(lp, frame_offset=10)
    assert [w.text for w in result.words] == ["cab"]
    word = result.words[0]
    assert word.tokens == (C, A, B)
    # frames of the chosen path: c at 0, a at 2, b at 3 (the end is exclusive), offset applied
    assert (word.start_frame, word.end_frame) == (10, 14)
    p = np.exp(lp)
    assert math.isclose(word.confidence, float(np.mean([p[0, C], p[2, A], p[3, B]])), rel_tol=1e-5)
    assert result.last_token == BLANK


def test_out_of_lexicon_units_fall_back_to_the_greedy_sequence() -> None:
    lp = frames({D: 0.95}, {D: 0.9}, {BLANK: 0.9}, {C: 0.9}, {WB: 0.9}, {A: 0.8}, {B: 0.9}, {BLANK: 0.999})
    lex = lexicon(("ab", [A, B], -2.0))
    result = decoder(lex).decode(lp)
    greedy = greedy_words(lp, blank_id=BLANK, delimiter_id=WB).words
    assert [(w.text, w.tokens) for w in result.words] == [(None, (D, C)), ("ab", (A, B))]
    assert [(w.start_frame, w.end_frame) for w in result.words] == [
        (g.start_frame, g.end_frame) for g in greedy
    ]
    # render_words spells only the unknown word, with the engine's speller, and keeps the times.
    spelled: list[tuple[int, ...]] = []

    def spell(words: object) -> list[str]:
        spelled.extend(tuple(w) for w in words)  # type: ignore[attr-defined]
        return ["dc" for _ in spelled]

    words, last = render_words(
        lp,
        blank_id=BLANK,
        delimiter_id=WB,
        spell=spell,
        frame_samples=320,
        first_frame=0,
        origin_sample=16000,
        decoder=decoder(lex),
    )
    assert spelled == [(D, C)]
    assert [w.word for w in words] == ["dc", "ab"]
    assert words[0].start == 1.0 and words[0].end == 1.0 + 4 * 0.02
    assert last == BLANK


def test_a_missed_word_boundary_is_found_between_lexicon_words() -> None:
    # "ab" then "cd" with no delimiter between them: greedy makes one word, the lexicon two.
    lp = frames({A: 0.9}, {B: 0.9}, {BLANK: 0.9}, {C: 0.9}, {D: 0.9}, {BLANK: 0.999})
    lex = lexicon(("ab", [A, B], -2.0), ("cd", [C, D], -2.0))
    result = decoder(lex).decode(lp)
    assert [w.text for w in result.words] == ["ab", "cd"]
    assert [(w.start_frame, w.end_frame) for w in result.words] == [(0, 2), (3, 5)]
    # Without implicit boundaries the units stay one out-of-lexicon word.
    whole = decoder(lex, split_penalty=math.inf).decode(lp)
    assert [(w.text, w.tokens) for w in whole.words] == [(None, (A, B, C, D))]


def test_the_language_model_decides_between_acoustically_close_words() -> None:
    lp = frames({A: 0.9}, {C: 0.5, D: 0.48}, {BLANK: 0.999})
    lex = lexicon(("ac", [A, C], -6.0), ("ad", [A, D], -2.0))
    assert [w.text for w in decoder(lex).decode(lp).words] == ["ad"]
    assert [w.text for w in decoder(lex, lm_weight=0.0).decode(lp).words] == ["ac"]


def test_a_token_continuing_from_the_previous_call_is_not_emitted_again() -> None:
    lex = lexicon(("ab", [A, B], -2.0), ("b", [B], -2.0))
    lp = frames({B: 0.9}, {B: 0.9}, {BLANK: 0.999}, {A: 0.9}, {B: 0.9}, {BLANK: 0.99})
    dec = decoder(lex)
    assert [w.text for w in dec.decode(lp, prev_token=B).words] == ["ab"]
    assert [w.text for w in dec.decode(lp).words] == ["b", "ab"]
    # and the path's last token is carried like greedy's
    tail = frames({BLANK: 0.5}, {A: 0.9})
    assert dec.decode(tail).last_token == A
    assert greedy_words(tail, blank_id=BLANK, delimiter_id=WB).last_token == A


def test_silence_and_empty_input_give_no_words() -> None:
    dec = decoder(lexicon(("ab", [A, B], -2.0)))
    assert dec.decode(frames(*[{BLANK: 0.9999}] * 50)).words == []
    empty = dec.decode(np.zeros((0, VOCAB), dtype=np.float32), prev_token=A)
    assert empty.words == [] and empty.last_token == A


def _tone_engine_with_lexicon() -> ToneEngine:
    engine = ToneEngine()
    lex = Lexicon()
    for word in WORDS:
        # Upper case in the lexicon, so that a word that came from the beam search shows it.
        lex.add(word.upper(), [engine.vocabulary.index(ch) for ch in word], -3.0)
    engine.final_decoder = BeamDecoder(  # type: ignore[attr-defined]
        lex, blank_id=engine.blank_id, delimiter_id=engine.word_delimiter_id
    )
    return engine


def test_session_finals_use_the_engines_decoder_and_equal_the_offline_pass() -> None:
    engine = _tone_engine_with_lexicon()
    assert final_decoder(engine) is not None and final_decoder(ToneEngine()) is None
    groups = [WORDS[:3], WORDS[3:7]]
    audio = speech(groups, seed=3)
    session = Session(engine, StreamingConfig(), detector=EnergyDetector())
    events = run_session(session, engine, audio, sizes=(1600,))
    fs = finals(events)
    assert [w.word for f in fs for w in f.words] == [w.upper() for g in groups for w in g]
    offline = transcribe_samples(engine, audio, VadConfig(), detector=EnergyDetector())
    assert [f.words for f in fs] == [tuple(r.words) for r in offline]
    # Interim results stay greedy (spelled by the engine: lower case).
    partial_words = [w.word for e in events if isinstance(e, Transcript) and not e.is_final for w in e.words]
    assert partial_words and all(w.islower() for w in partial_words)


class _Recording:
    """Wraps a decoder and notes the thread of each call."""

    def __init__(self, inner: BeamDecoder) -> None:
        self.inner = inner
        self.threads: list[int] = []

    def decode(
        self,
        logprobs: np.ndarray,
        *,
        frame_offset: int = 0,
        prev_token: int | None = None,
        keyterms: KeytermTrie | None = None,
    ) -> BeamResult:
        self.threads.append(threading.get_ident())
        return self.inner.decode(
            logprobs, frame_offset=frame_offset, prev_token=prev_token, keyterms=keyterms
        )


async def test_a_streams_finals_are_decoded_on_the_inference_thread_not_the_event_loop() -> None:
    engine = _tone_engine_with_lexicon()
    recording = _Recording(engine.final_decoder)  # type: ignore[attr-defined]
    engine.final_decoder = recording  # type: ignore[attr-defined]
    groups = [WORDS[:3], WORDS[3:7], WORDS[7:9]]
    audio = speech(groups, seed=5)
    batcher = Batcher(engine, BatcherConfig())
    batcher.start()
    events: list[object] = []
    stream = Stream(engine, StreamingConfig(), AudioFormat("linear16", 16000), EnergyDetector)
    runner = StreamRunner(stream, batcher, events.append)
    data = float_to_linear16(audio)
    for i in range(0, len(data), 3200):
        runner.feed(data[i : i + 3200])
        await runner.wait_idle()
    await runner.finish()
    await batcher.stop()
    fs = [e for e in events if isinstance(e, Transcript) and e.is_final]
    offline = transcribe_samples(engine, audio, VadConfig(), detector=EnergyDetector())
    assert [f.words for f in fs] == [tuple(r.words) for r in offline]  # still exactly the offline pass
    assert [w.word for f in fs for w in f.words] == [w.upper() for g in groups for w in g]
    loop_thread = threading.get_ident()
    streamed = recording.threads[: len(recording.threads) - len(offline)]  # before the offline pass
    assert streamed and loop_thread not in streamed


# ---- tier 3: the built-in model's lexicon and the benchmark ------------------------------------------------


def test_hama_lexicon_is_built_once_in_the_models_own_units_then_loaded_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hama

    from streamer.engine import hama_lexicon

    monkeypatch.setenv("STREAMER_CACHE_DIR", str(tmp_path))
    vocabulary = list(hama.ASRModel().decoder_tokens)
    lex = hama_lexicon.load_hama_lexicon(vocabulary, 60, quiet=True)
    # every G2P phoneme is a unit of the acoustic model (none left out)
    assert lex.skipped == 0 and len(lex) > 50
    index = lex.find([vocabulary.index(p) for p in ("ð", "i")])
    assert index >= 0 and lex.words[index] == "the"
    cached = list(tmp_path.glob("hama-g2p-v*.tsv"))
    assert len(cached) == 1 and len(cached[0].read_text(encoding="utf-8").splitlines()) == 60

    def no_g2p() -> None:
        raise AssertionError("G2P ran although the cache has every word")

    monkeypatch.setattr(hama, "G2PModel", no_g2p)
    started = time.perf_counter()
    again = hama_lexicon.load_hama_lexicon(vocabulary, 60, quiet=True)
    assert time.perf_counter() - started < 0.5
    assert again.words == lex.words and again.children == lex.children


def test_hama_lexicon_build_in_worker_processes_gives_the_same_pronunciations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.engine import hama_lexicon

    words = [w for w, _ in hama_lexicon.english_words(12)]
    monkeypatch.setenv("STREAMER_CACHE_DIR", str(tmp_path / "one"))
    alone = hama_lexicon.pronunciations(words)
    # chunks of 5 words over 2 spawned processes, appended to the cache as each chunk lands
    monkeypatch.setenv("STREAMER_CACHE_DIR", str(tmp_path / "two"))
    monkeypatch.setattr(hama_lexicon, "_CHUNK", 5)
    monkeypatch.setattr(hama_lexicon, "_build_workers", lambda todo: 2)
    progress: list[tuple[int, int]] = []
    parallel = hama_lexicon.pronunciations(words, lambda done, todo: progress.append((done, todo)))
    assert parallel == alone and all(alone.values())
    assert progress == [(5, 12), (10, 12), (12, 12)]
    lines = next((tmp_path / "two").glob("*.tsv")).read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in lines] == words


def test_accuracy_bench_with_the_beam_decoder(eval_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.bench.accuracy import main

    argv = ["--data", str(eval_data), "--clips", "2", "--no-long-stream", "--quiet", "--no-sim"]
    assert main([*argv, "--noise-only-s", "0", "--decoder", "beam", "--lexicon-words", "1000"]) == 0
    fields = dict(kv.split("=") for kv in capsys.readouterr().out.strip().splitlines()[-1].split()[1:])
    assert fields["decoder"] == "beam"
    assert fields["stream_vs_offline"] == "0.0000"  # finals and the offline pass use the same decoder
    assert 0 < float(fields["decoder_cpu"]) < 0.01
