"""Command line of the client: `python -m client [--file PATH] [options]`; see `--help`.

Environment defaults: STREAMER_URL (server base URL), STREAMER_API_KEY. Without --file the client
captures the microphone (needs sounddevice and the PortAudio library); --file streams a recording,
converted to 16 kHz mono int16 on the client, at real-time pace.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from client.errors import ClientError
from client.options import DEFAULT_URL, ClientOptions
from client.run import run_client
from client.sources import describe_input_devices, import_sounddevice

EPILOG = """\
examples:
  python -m client --lang en                       live captions from the default microphone
  python -m client --file talk.wav --srt talk.srt  stream a recording, write subtitles
  python -m client --file talk.wav --json | jq .   raw server messages, one per line
  python -m client --tag room1                     caption the microphone; screens can follow "room1"
  python -m client --watch room1                   follow the captions of the streams tagged "room1"

--file reads anything soundfile reads and sends it as 16 kHz mono linear16, like the microphone.
exit codes: 0 done, 1 server or network error, 2 bad usage or unusable input, 130 interrupted.
Ctrl-C once ends the input and waits for the last results; twice quits at once.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m client",
        description="Live captions from the streamer server (Deepgram-compatible /v1/listen).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url",
        default=os.environ.get("STREAMER_URL", DEFAULT_URL),
        help="server base URL, ws(s):// or http(s):// (env STREAMER_URL; default %(default)s)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("STREAMER_API_KEY") or None,
        help="API key, sent as 'Authorization: Token KEY' (env STREAMER_API_KEY)",
    )
    p.add_argument(
        "--lang", "--language", dest="language", default="en", help="language (default %(default)s)"
    )
    p.add_argument("--model", help="model name to ask the server for")
    p.add_argument("--tag", help="label the stream so screens can follow it (--watch TAG, the page's /watch)")
    p.add_argument(
        "--watch",
        metavar="TAG",
        help="receive only: show the captions of the streams another client sends with --tag TAG",
    )
    source = p.add_argument_group("input (microphone unless --file)")
    source.add_argument(
        "--file", type=Path, metavar="PATH", help="stream a recording instead of the microphone"
    )
    source.add_argument(
        "--speed", type=float, default=1.0, help="--file pace multiplier (default 1 = real time)"
    )
    source.add_argument("--no-pace", action="store_true", help="--file: send as fast as the server accepts")
    source.add_argument("--device", help="microphone: device index or part of its name (see --list-devices)")
    source.add_argument("--list-devices", action="store_true", help="print the input devices and exit")
    out = p.add_argument_group("output")
    out.add_argument(
        "--json", action="store_true", help="print each server message as one JSON line, no captions"
    )
    out.add_argument("--srt", type=Path, metavar="FILE", help="write SubRip captions on exit")
    out.add_argument("--vtt", type=Path, metavar="FILE", help="write WebVTT captions on exit")
    out.add_argument(
        "--interim",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask for and show interim (partial) results (default on)",
    )
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--file progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--resume-buffer",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds of audio kept since the last final, replayed when the server restarts or the "
        "connection drops, so the stream continues where it was (0: no resuming; default %(default)g)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait to connect, and for the last results after the input (default %(default)s)",
    )
    return p


def options_from_args(args: argparse.Namespace) -> ClientOptions:
    """ClientOptions from parsed arguments; raises ValueError for inconsistent values."""
    if args.file is not None and args.device is not None:
        raise ValueError("--device selects a microphone; it cannot be combined with --file")
    if args.watch is not None and (args.file is not None or args.device is not None or args.tag):
        raise ValueError("--watch only receives: it cannot be combined with --file, --device or --tag")
    return ClientOptions(
        url=args.url,
        api_key=args.api_key,
        language=args.language,
        model=args.model or None,
        file=args.file,
        device=args.device,
        speed=args.speed,
        pace=not args.no_pace,
        interim=args.interim,
        json_output=args.json,
        srt=args.srt,
        vtt=args.vtt,
        progress=args.progress,
        open_timeout=args.timeout,
        close_timeout=args.timeout,
        tag=args.tag or None,
        watch=args.watch or None,
        resume_buffer_s=args.resume_buffer,
    )


def list_devices(out: TextIO, err: TextIO) -> int:
    """--list-devices: one line per input device, `*` marking the default."""
    try:
        sd = import_sounddevice()
        lines = describe_input_devices(sd)
    except ClientError as exc:
        err.write(f"error: {exc}\n")
        return exc.exit_code
    except Exception as exc:  # PortAudio errors while enumerating devices
        err.write(f"error: cannot list audio devices: {exc}\n")
        return 1
    if not lines:
        err.write("no audio input devices found\n")
        return 1
    out.write("\n".join(lines) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client with `argv` (default sys.argv[1:]); returns the exit code instead of exiting."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's usage error
        return exc.code if isinstance(exc.code, int) else 2
    if args.list_devices:
        return list_devices(sys.stdout, sys.stderr)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"error: {exc}\n")
        return 2
    try:
        return asyncio.run(run_client(options, handle_sigint=True))
    except KeyboardInterrupt:  # loops without signal handlers (Windows) get Ctrl-C as an exception
        sys.stderr.write("\ninterrupted\n")
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, and keep Python's exit flush from failing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
