"""Decode the server's JSON messages (Deepgram shape) into the few typed values the client uses.

Decoding is lenient: a missing field gets a neutral default, so a server that omits optional parts (words,
confidences) still produces captions. Unknown message types are kept as plain dicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Word:
    """One recognised word with its times in seconds of stream audio."""

    text: str
    start: float
    end: float
    confidence: float | None = None


@dataclass(frozen=True)
class Result:
    """A `Results` message: the first alternative of one channel."""

    is_final: bool
    speech_final: bool
    from_finalize: bool
    start: float
    duration: float
    transcript: str
    words: tuple[Word, ...]


def decode(text: str) -> dict[str, Any]:
    """Parse one text frame; raises ValueError when it is not a JSON object."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("server message is not a JSON object")
    return data


def message_type(data: dict[str, Any]) -> str:
    return str(data.get("type", ""))


def _number(value: Any, default: float = 0.0) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def parse_result(data: dict[str, Any]) -> Result:
    """The first alternative of a `Results` message, with words (punctuated form preferred)."""
    channel = data.get("channel")
    alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
    best = alternatives[0] if isinstance(alternatives, list) and alternatives else {}
    if not isinstance(best, dict):
        best = {}
    words: list[Word] = []
    for item in best.get("words") or []:
        if not isinstance(item, dict):
            continue
        text = item.get("punctuated_word") or item.get("word")
        if not isinstance(text, str) or not text:
            continue
        confidence = item.get("confidence")
        words.append(
            Word(
                text=text,
                start=_number(item.get("start")),
                end=_number(item.get("end")),
                confidence=_number(confidence) if confidence is not None else None,
            )
        )
    transcript = best.get("transcript")
    return Result(
        is_final=bool(data.get("is_final", False)),
        speech_final=bool(data.get("speech_final", False)),
        from_finalize=bool(data.get("from_finalize", False)),
        start=_number(data.get("start")),
        duration=_number(data.get("duration")),
        transcript=transcript.strip() if isinstance(transcript, str) else "",
        words=tuple(words),
    )


def error_description(data: dict[str, Any]) -> str:
    """Human text of an `Error` message (Deepgram puts it in description or message)."""
    for key in ("description", "message", "err_msg", "reason"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return json.dumps(data)
