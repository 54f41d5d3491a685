"""The built-in model's lexicon: English words (wordfreq) with pronunciations from hama's own G2P.

`load_hama_lexicon(vocabulary, words=N)` returns a `streamer.decoding.Lexicon` of the N most frequent
English words, as sequences of the acoustic model's phoneme ids, with log10 word frequencies.
Pronunciations are cached in the user's cache folder (`$XDG_CACHE_HOME/streamer`, else `~/.cache/streamer`,
or `STREAMER_CACHE_DIR`), one file per hama version: the first build runs G2P word by word (~16 ms a word
on one core, progress on stderr) and appends as it goes, so an interrupted build resumes and a larger N only
converts the words it lacks; afterwards loading takes a fraction of a second. Progress is logged
(`logging`, this module's logger).
`python -m streamer.engine.hama_lexicon --words N` builds the cache ahead of time.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

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
        import hama  # deferred: importing it loads the runtime library

        log.warning("lexicon: converting %d words with G2P once (minutes); cache %s", len(todo), path)
        g2p = hama.G2PModel()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for i, word in enumerate(todo):
                # Alignments hold one unit per phoneme token; spaces split letters read one by one.
                phones = tuple(a.phoneme for a in g2p.predict(word).alignments if a.phoneme.strip())
                known[word] = phones
                f.write(f"{word}\t{' '.join(phones)}\n")
                if progress is not None and (i + 1) % 500 == 0:
                    f.flush()
                    progress(i + 1, len(todo))
        if progress is not None:
            progress(len(todo), len(todo))
    return {w: known[w] for w in words}


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
