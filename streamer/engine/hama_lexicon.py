"""The built-in model's lexicon: English words (wordfreq) with pronunciations from hama's own G2P.

`load_hama_lexicon(vocabulary, words=N)` returns a `streamer.decoding.Lexicon` of the N most frequent
English words, as sequences of the acoustic model's phoneme ids, with log10 word frequencies.
Pronunciations are cached in the user's cache folder (`$XDG_CACHE_HOME/streamer`, else `~/.cache/streamer`,
or `STREAMER_CACHE_DIR`), one file per hama version: the first build runs G2P word by word (~17 ms a word
on one core, in one process per core up to 8, progress logged) and appends as it goes, so an interrupted
build resumes and a larger N only converts the words it lacks; afterwards loading takes a fraction of a
second. Progress is logged
(`logging`, this module's logger).
`python -m streamer.engine.hama_lexicon --words N` builds the cache ahead of time.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.decoding import BeamDecoder, BeamOptions, Lexicon

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from streamer.engine.hama_engine import HamaEngine

CACHE_FORMAT = 1
"""Bump when the cached file's layout or the way pronunciations are made changes."""
DEFAULT_WORDS = 20_000
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)?$")


def cache_dir() -> Path:
    """Folder for caches: STREAMER_CACHE_DIR, else $XDG_CACHE_HOME/streamer, else ~/.cache/streamer."""
    explicit = os.environ.get("STREAMER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamer"


def _cache_file() -> Path:
    # Pronunciations depend on hama's G2P model only; the word list is re-read (cheap) each time.
    return cache_dir() / f"hama-g2p-v{CACHE_FORMAT}-{metadata.version('hama')}.tsv"


def english_words(count: int) -> list[tuple[str, float]]:
    """The `count` most frequent plain English words (letters, one inner apostrophe) with log10 frequency."""
    import wordfreq

    out: list[tuple[str, float]] = []
    for word in wordfreq.top_n_list("en", int(count * 1.3) + 100):
        if _WORD.match(word):
            out.append((word, float(wordfreq.zipf_frequency(word, "en")) - 9.0))
            if len(out) == count:
                break
    return out


def _read_cache(path: Path) -> dict[str, tuple[str, ...]]:
    known: dict[str, tuple[str, ...]] = {}
    if not path.exists():
        return known
    with path.open(encoding="utf-8") as f:
        for line in f:
            word, _, phones = line.rstrip("\n").partition("\t")
            if word:
                known[word] = tuple(phones.split(" ")) if phones else ()
    return known


def pronunciations(
    words: Sequence[str], progress: Callable[[int, int], None] | None = None
) -> dict[str, tuple[str, ...]]:
    """Phonemes of each word by hama's G2P, from the cache where present (missing ones are converted and
    appended to it). `progress(done, todo)` is called every few hundred conversions."""
    path = _cache_file()
    known = _read_cache(path)
    todo = [w for w in words if w not in known]
    if todo:
        workers = _build_workers(len(todo))
        log.warning(
            "lexicon: converting %d words with G2P once (%d processes, about %.0f s); cache %s",
            len(todo),
            workers,
            len(todo) * G2P_SECONDS_PER_WORD / workers,
            path,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
        done = 0
        with path.open("a", encoding="utf-8") as f:
            # G2P runs one word at a time on one core: a few processes convert chunks side by side, and
            # each finished chunk is appended at once, so an interrupted build resumes where it stopped.
            for chunk in _convert_chunks(chunks, workers):
                for word, phones in chunk:
                    known[word] = phones
                    f.write(f"{word}\t{' '.join(phones)}\n")
                f.flush()
                done += len(chunk)
                if progress is not None:
                    progress(done, len(todo))
    return {w: known[w] for w in words}


G2P_SECONDS_PER_WORD = 0.017
"""Measured on one core of our CI machines; for the build's time estimate."""
_CHUNK = 500


def _build_workers(todo: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8, -(-todo // _CHUNK)))


def _g2p_chunk(words: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """G2P of each word in a worker process (the model is loaded once per process)."""
    global _WORKER_G2P
    if _WORKER_G2P is None:
        import hama  # deferred: importing it loads the runtime library

        _WORKER_G2P = hama.G2PModel()
    # Alignments hold one unit per phoneme token; spaces split letters read one by one.
    return [
        (w, tuple(a.phoneme for a in _WORKER_G2P.predict(w).alignments if a.phoneme.strip())) for w in words
    ]


_WORKER_G2P: Any = None


def _convert_chunks(chunks: list[list[str]], workers: int) -> Iterator[list[tuple[str, tuple[str, ...]]]]:
    if workers == 1:
        yield from map(_g2p_chunk, chunks)
        return
    # spawn, not fork: the server process may hold threads (torch, the batcher) that fork would break.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(_g2p_chunk, chunks)


def _log_progress(done: int, todo: int) -> None:
    log.info("lexicon: G2P %d/%d words", done, todo)


def load_hama_lexicon(
    vocabulary: Sequence[str], words: int = DEFAULT_WORDS, *, quiet: bool = False
) -> Lexicon:
    """Lexicon of the `words` most frequent English words in ids of `vocabulary` (the acoustic model's).

    Words whose G2P phonemes include a unit the acoustic model lacks are left out (counted in
    `Lexicon.skipped`)."""
    entries = english_words(words)
    started = time.monotonic()
    prons = pronunciations([w for w, _ in entries], None if quiet else _log_progress)
    ids = {t: i for i, t in enumerate(vocabulary)}
    lexicon = Lexicon()
    for word, logfreq in entries:
        phones = prons[word]
        units = [ids.get(p) for p in phones]
        if not phones or any(u is None for u in units):
            lexicon.skipped += 1
            continue
        lexicon.add(word, [u for u in units if u is not None], logfreq)
    log.log(
        logging.INFO if time.monotonic() - started > 5 else logging.DEBUG,
        "lexicon: %d words in %.2f s (%d left out)",
        len(lexicon),
        time.monotonic() - started,
        lexicon.skipped,
    )
    return lexicon


_PARTS = re.compile(r"[A-Z]?[a-z']+|[A-Z]+(?![a-z])|[a-z']+")


def _spellings(word: str) -> list[list[str]]:
    """Ways to read `word` as G2P input, each a list of pieces: the word, its CamelCase or hyphenated
    parts, and the word without apostrophes and hyphens."""
    out = [[word]]
    parts = _PARTS.findall(word)
    if len(parts) > 1:
        out.append(parts)
    plain = re.sub(r"['\-]", "", word)
    if plain != word and plain:
        out.append([plain])
    return out


class HamaPronouncer:
    """`pronounce(word)`: the word's pronunciations in the acoustic model's unit ids, by hama's G2P (from
    the lexicon cache where the word is there; thread-safe). A word G2P reads only as unknown units (it
    spells unknown words letter by letter) is tried in two halves. Empty: no way to spell it."""

    def __init__(self, vocabulary: Sequence[str]) -> None:
        self._ids = {t: i for i, t in enumerate(vocabulary)}
        self._lock = threading.Lock()
        self._g2p: Any = None
        self._cache: dict[str, tuple[str, ...]] | None = None
        self._english: frozenset[str] = frozenset()
        """Units English words use (those of the cached lexicon): the inventory has other languages'."""

    def _phonemes(self, piece: str) -> tuple[str, ...]:
        key = piece.lower()
        with self._lock:
            if self._cache is None:
                self._cache = _read_cache(_cache_file())
                self._english = frozenset(p for phones in self._cache.values() for p in phones)
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            if self._g2p is None:
                import hama

                self._g2p = hama.G2PModel()
            result = self._g2p.predict(key)
            # A space inside one word's output: G2P read it letter by letter (unknown to it). No use.
            spaced = any(not a.phoneme.strip() for a in result.alignments)
            phones = () if spaced else tuple(a.phoneme for a in result.alignments)
            self._cache[key] = phones
            return phones

    def _units(self, pieces: Sequence[str]) -> tuple[int, ...] | None:
        out: list[int] = []
        for piece in pieces:
            phones = self._phonemes(piece)
            units = [self._ids.get(p) for p in phones]
            if not phones or any(u is None for u in units) or not self._english.issuperset(phones):
                return None
            out.extend(u for u in units if u is not None)
        return tuple(out)

    def __call__(self, word: str) -> list[tuple[int, ...]]:
        found: list[tuple[int, ...]] = []
        for pieces in _spellings(word):
            units = self._units(pieces)
            if units is not None and units not in found:
                found.append(units)
        if not found and len(word) >= 6:
            for cut in range(len(word) // 2, len(word) - 2):
                units = self._units([word[:cut], word[cut:]])
                if units is not None:
                    found.append(units)
                    break
        return found


def beam_decoder(engine: HamaEngine, options: BeamOptions, words: int = DEFAULT_WORDS) -> BeamDecoder:
    """The beam decoder for `engine`'s finals, over a lexicon of its `words` most frequent words."""
    vocabulary = list(engine.vocabulary)
    specials = frozenset(i for i, t in enumerate(vocabulary) if t.startswith("<") and t.endswith(">"))
    return BeamDecoder(
        load_hama_lexicon(vocabulary, words),
        blank_id=engine.blank_id,
        delimiter_id=engine.word_delimiter_id,
        options=options,
        ignore=specials - {engine.word_delimiter_id},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.engine.hama_lexicon", description="Build the built-in model's lexicon cache."
    )
    parser.add_argument("--words", type=int, default=DEFAULT_WORDS, help="most frequent words to include")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import hama

    started = time.monotonic()
    vocabulary = list(hama.ASRModel().decoder_tokens)
    lexicon = load_hama_lexicon(vocabulary, args.words)
    print(
        f"{len(lexicon)} words ({lexicon.skipped} skipped: units not in the acoustic model) "
        f"in {time.monotonic() - started:.1f} s; cache {_cache_file()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
