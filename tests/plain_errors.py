"""What a refusal may not contain: a client reads error messages, so they name the problem in words and
never leak the server's internals (object reprs, file paths, tracebacks, exception class names)."""

from __future__ import annotations

import re

# Each pattern is a leak seen in real servers: `Error opening <_io.BytesIO object at 0x7f...>` (soundfile),
# `/usr/lib/python3/...` or `C:\...` paths, `Traceback (most recent call last)`, `<class 'KeyError'>`.
LEAKS = (
    re.compile(r"object at 0x[0-9a-f]+"),
    re.compile(r"<[\w.]+ (object|at) "),
    re.compile(r"<class '"),
    re.compile(r"Traceback"),
    re.compile(r"File \"[^\"]+\", line \d+"),
    re.compile(r"(^|[\s'\"(])/(usr|home|root|tmp|var|opt|work|srv|etc)/"),
    re.compile(r"[\w/]+\.py\b"),
    re.compile(r"[A-Za-z]:\\\\"),
)


def assert_plain(text: str) -> None:
    """Fails when `text`, an error message meant for a client, leaks an internal detail."""
    for pattern in LEAKS:
        assert not pattern.search(text), f"error message leaks {pattern.pattern!r}: {text!r}"
