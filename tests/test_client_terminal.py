"""Live terminal output on fake terminals: partial redraw, final commit, truncation, progress bar."""

from __future__ import annotations

import io
import json

from client.messages import decode, parse_result
from client.run import CaptionSink
from client.terminal import CLEAR_LINE, Console, cell_width, fit_tail, progress_text


def console(
    *, out_tty: bool = True, err_tty: bool = True, width: int = 40, **kwargs: object
) -> tuple[Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    c = Console(out, err, out_tty=out_tty, err_tty=err_tty, width=lambda: width, **kwargs)  # type: ignore[arg-type]
    return c, out, err


def screen(text: str) -> list[str]:
    """What a terminal shows: `\\r` + clear-line erases the current line, `\\n` ends it."""
    lines = [""]
    for i, chunk in enumerate(text.split(CLEAR_LINE)):
        if i:
            lines[-1] = ""
        parts = chunk.split("\n")
        lines[-1] += parts[0]
        lines.extend(parts[1:])
    return lines


def test_partial_is_redrawn_in_place_and_final_committed() -> None:
    c, out, _ = console()
    c.partial("hello")
    c.partial("hello wor")
    assert out.getvalue() == CLEAR_LINE + "hello" + CLEAR_LINE + "hello wor"
    c.final("hello world.")
    c.partial("next")
    assert screen(out.getvalue()) == ["hello world.", "next"]
    c.finish()
    assert screen(out.getvalue()) == ["hello world.", ""]


def test_partial_is_truncated_to_the_terminal_width_keeping_the_newest_words() -> None:
    c, out, _ = console(width=12)
    c.partial("the quick brown fox jumps")
    shown = screen(out.getvalue())[-1]
    assert shown == "… fox jumps"
    assert cell_width(shown) <= 11  # one column spare so the terminal never wraps
    assert fit_tail("한국어 자막", 6) == "… 자막"
    assert fit_tail("abcdef", 5, "...") == "...ef"
    assert cell_width(fit_tail("한국어 자막입니다", 7)) <= 7


def test_no_live_redraw_when_stdout_is_not_a_terminal() -> None:
    c, out, err = console(out_tty=False, err_tty=False)
    c.partial("ignored")
    c.final("kept")
    c.progress(1.0, 2.0, force=True)
    c.finish()
    assert out.getvalue() == "kept\n"
    assert err.getvalue() == ""


def test_progress_and_partial_share_one_line_on_one_terminal() -> None:
    c, out, err = console(width=80, progress=True)
    c.progress(1.0, 4.0, force=True)
    c.partial("some words")
    assert screen(out.getvalue())[-1] == progress_text(1.0, 4.0) + "  some words"
    c.warn("warning: careful")
    # The warning goes to stderr while the status line is cleared and redrawn on stdout.
    assert err.getvalue() == "warning: careful\n"
    assert out.getvalue().endswith(CLEAR_LINE + progress_text(1.0, 4.0) + "  some words")


def test_progress_alone_on_stderr_when_stdout_is_redirected() -> None:
    c, out, err = console(out_tty=False, err_tty=True, progress_interval=10.0)
    c.progress(0.5, 2.0)
    c.progress(1.0, 2.0)  # throttled
    c.final("text")
    c.progress(2.0, 2.0, force=True)
    c.finish()
    assert out.getvalue() == "text\n"
    assert (
        err.getvalue()
        == CLEAR_LINE + progress_text(0.5, 2.0) + CLEAR_LINE + progress_text(2.0, 2.0) + CLEAR_LINE
    )


def test_progress_text() -> None:
    assert progress_text(1.5, 6.0, bar_width=8) == "[##------]  25%   1.5/6.0 s"
    assert progress_text(7.0, 6.0, bar_width=4) == "[####] 100%   6.0/6.0 s"
    assert progress_text(3.25, None) == "3.2 s sent"


def result(text: str, *, final: bool) -> str:
    alternative = {"transcript": text, "words": []}
    body = {
        "type": "Results",
        "is_final": final,
        "start": 0,
        "duration": 1,
        "channel": {"alternatives": [alternative]},
    }
    return json.dumps(body)


def test_sink_renders_results_and_collects_finals() -> None:
    c, out, err = console()
    sink = CaptionSink(c)
    sink.handle(result("hel", final=False))
    sink.handle(result("hello", final=True))
    sink.handle('{"type": "SpeechStarted", "timestamp": 1.0}')
    sink.handle(result("wor", final=False))
    sink.handle(result("world", final=True))
    sink.handle('{"type": "UtteranceEnd", "last_word_end": 2.0}')
    sink.handle('{"type": "Metadata", "duration": 2.0}')
    sink.handle("not json")
    assert screen(out.getvalue()) == ["hello", "world", ""]
    assert sink.transcript == "hello world"
    assert "not JSON" in err.getvalue()


def test_sink_json_mode_prints_messages_verbatim() -> None:
    c, out, _ = console()
    sink = CaptionSink(c, json_output=True)
    messages = [result("a", final=False), result("a b", final=True), '{"type":"Metadata"}']
    for m in messages:
        sink.handle(m)
    assert out.getvalue() == "".join(m + "\n" for m in messages)
    assert sink.transcript == "a b"


def test_parse_result_prefers_punctuated_words_and_tolerates_missing_fields() -> None:
    data = decode(
        '{"type":"Results","is_final":true,"speech_final":true,"start":1.5,"duration":2,'
        '"channel":{"alternatives":[{"transcript":"hi there","words":['
        '{"word":"hi","punctuated_word":"Hi,","start":1.6,"end":1.8,"confidence":0.9},'
        '{"word":"there","start":1.9,"end":2.2}]}]}}'
    )
    r = parse_result(data)
    assert r.is_final and r.speech_final and not r.from_finalize
    assert (r.start, r.duration, r.transcript) == (1.5, 2.0, "hi there")
    assert [(w.text, w.start, w.end, w.confidence) for w in r.words] == [
        ("Hi,", 1.6, 1.8, 0.9),
        ("there", 1.9, 2.2, None),
    ]
    empty = parse_result({"type": "Results"})
    assert empty.transcript == "" and empty.words == () and not empty.is_final
