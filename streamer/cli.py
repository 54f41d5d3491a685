"""Command line: flags and `STREAMER_*` environment variables -> `ServerConfig`, then serve.

`python -m streamer --help` lists every flag with its environment variable and default. A flag beats its
variable, the variable beats the default. From code: `build_config(argv, environ)` returns the config (or
raises ConfigError); `main(argv)` parses, configures logging, runs the server and returns the exit status
(2 for invalid settings, 1 when a model cannot be loaded or the port cannot be bound).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn, TypeVar

from streamer.batcher import BatcherConfig
from streamer.config import (
    DEFAULT_MODELS,
    VAD_CHOICES,
    DeliveryConfig,
    Limits,
    ModelSpec,
    ServerConfig,
    TelephonyConfig,
    VadChoice,
    normalise_origin,
)
from streamer.decoding.keyterms import Keyterm, KeytermError, KeytermLimits, check_keyterms, parse_keyterm
from streamer.engine import DECODERS, EngineOptions
from streamer.engine.batching import AUTO_BATCH_LIMIT
from streamer.errors import ConfigError, ModelLoadError, StreamerError
from streamer.logs import log_format
from streamer.session import StreamingConfig
from streamer.vad import VadConfig
from streamer.windows import WindowPlan

log = logging.getLogger(__name__)

T = TypeVar("T")
LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    default: str | None
    help: str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


_DEFAULT_LIMITS = Limits()
_DEFAULT_STREAMING = StreamingConfig()
_DEFAULT_BATCHER = BatcherConfig()
_DEFAULT_VAD = VadConfig()
_DEFAULT_PLAN = WindowPlan()

# Single-valued options. Repeatable ones (--model, --api-key) and --no-final-pass are added by hand.
_OPTIONS: tuple[_Option, ...] = (
    _Option("--host", "STREAMER_HOST", "127.0.0.1", "interface to listen on"),
    _Option("--port", "STREAMER_PORT", "8000", "TCP port; 0 picks a free one (the log says which)"),
    _Option(
        "--workers",
        "STREAMER_WORKERS",
        "1",
        "server processes, or auto (one per core): each loads its own copy of every model and serves the "
        "streams handed to it; a supervisor accepts connections, hands each to the least loaded worker and "
        "restarts a worker that dies; stream limits, /readyz and /metrics stay server-wide (on a GPU, run "
        "NVIDIA MPS so that the workers' kernels share it)",
        "N",
    ),
    _Option(
        "--api-keys-file",
        "STREAMER_API_KEYS_FILE",
        None,
        "file with one API key per line (# comments), optionally followed by max_streams=N to cap that "
        "key's concurrent streams (429 beyond) and watch=all to let it watch every stream's tag",
        "FILE",
    ),
    _Option("--max-streams", "STREAMER_MAX_STREAMS", str(_DEFAULT_LIMITS.max_streams), "concurrent streams"),
    _Option(
        "--max-keyterms",
        "STREAMER_MAX_KEYTERMS",
        str(KeytermLimits().max_terms),
        f"keyterms one stream may send (400 beyond; each at most {KeytermLimits().max_chars} characters "
        f"and {KeytermLimits().max_words} words, boosts within +-{KeytermLimits().max_boost:g})",
    ),
    _Option(
        "--idle-timeout",
        "STREAMER_IDLE_TIMEOUT",
        f"{_DEFAULT_LIMITS.idle_timeout_s:g}",
        "seconds without audio or KeepAlive before a stream is closed (1011)",
    ),
    _Option(
        "--shutdown-grace",
        "STREAMER_SHUTDOWN_GRACE",
        f"{_DEFAULT_LIMITS.shutdown_grace_s:g}",
        "seconds to flush live streams once they are ended (after the drain, or at once on SIGINT) "
        "before cancelling them",
    ),
    _Option(
        "--drain-timeout",
        "STREAMER_DRAIN_TIMEOUT",
        f"{_DEFAULT_LIMITS.drain_timeout_s:g}",
        "seconds that running streams may go on after SIGTERM (the server is then not ready and refuses "
        "new streams); then their finals are flushed and they close with 1012; a second SIGTERM or a "
        "SIGINT ends them at once",
    ),
    _Option(
        "--max-message-bytes",
        "STREAMER_MAX_MESSAGE_BYTES",
        str(_DEFAULT_LIMITS.max_message_bytes),
        "largest WebSocket frame; bigger ones close the stream with 1009",
    ),
    _Option(
        "--max-body-bytes",
        "STREAMER_MAX_BODY_BYTES",
        str(_DEFAULT_LIMITS.max_body_bytes),
        "largest pre-recorded POST body (413 beyond)",
    ),
    _Option(
        "--max-inflight",
        "STREAMER_MAX_INFLIGHT",
        str(_DEFAULT_LIMITS.max_inflight_windows),
        "windows in flight per stream before the server stops reading its socket",
    ),
    _Option(
        "--max-busy",
        "STREAMER_MAX_BUSY",
        f"{_DEFAULT_LIMITS.max_busy_fraction:g}",
        "refuse new streams (503, /readyz not ready) while a model's inference lanes were busy more than "
        "this fraction of the last --load-window seconds; 1 refuses only when it was busy all the time",
        "FRACTION",
    ),
    _Option(
        "--max-queue-wait",
        "STREAMER_MAX_QUEUE_WAIT",
        f"{_DEFAULT_LIMITS.max_queue_wait_s:g}",
        "refuse new streams (503) while a model's windows waited longer than this many seconds on average "
        "in its batch queue over the last --load-window seconds",
        "SECONDS",
    ),
    _Option(
        "--load-window",
        "STREAMER_LOAD_WINDOW",
        f"{_DEFAULT_LIMITS.load_window_s:g}",
        "seconds over which engine load is measured for --max-busy and --max-queue-wait",
        "SECONDS",
    ),
    _Option(
        "--max-stream-duration",
        "STREAMER_MAX_STREAM_DURATION",
        f"{_DEFAULT_LIMITS.max_stream_duration_s:g}",
        "seconds a live stream may stay open; then its finals and Metadata are sent and it closes (1008)",
        "SECONDS",
    ),
    _Option(
        "--max-outbox",
        "STREAMER_MAX_OUTBOX",
        str(_DEFAULT_LIMITS.max_outbox),
        "results queued per stream for a client that reads slowly; beyond, the oldest interim results are "
        "dropped (finals never)",
        "MESSAGES",
    ),
    _Option("--tls-cert", "STREAMER_TLS_CERT", None, "PEM certificate (chain) for HTTPS/wss://", "FILE"),
    _Option("--tls-key", "STREAMER_TLS_KEY", None, "PEM private key of --tls-cert", "FILE"),
    _Option(
        "--callback-url",
        "STREAMER_CALLBACK_URL",
        None,
        "webhook that every stream posts its finals (and closing Metadata) to, unless it names its own "
        "callback",
        "URL",
    ),
    _Option(
        "--callback-secret",
        "STREAMER_CALLBACK_SECRET",
        None,
        "HMAC-SHA256 key that signs webhook posts (X-Streamer-Signature); prefer the variable: flags show "
        "in process lists",
        "SECRET",
    ),
    _Option(
        "--resume-secret",
        "STREAMER_RESUME_SECRET",
        None,
        "key that signs stream resume tokens; give every replica behind one address the same one so a "
        "stream cut by a restart continues on any of them (default: a random key per process); prefer "
        "the variable",
        "SECRET",
    ),
    _Option(
        "--resume-ttl",
        "STREAMER_RESUME_TTL",
        "300",
        "seconds a resume token stays valid after the final it came with",
        "SECONDS",
    ),
    _Option(
        "--callback-hosts",
        "STREAMER_CALLBACK_HOSTS",
        "",
        "comma-separated hosts a client's callback parameter may name, * for any; empty refuses "
        "client-given callbacks (400)",
        "HOSTS",
    ),
    _Option(
        "--twilio-auth-token",
        "STREAMER_TWILIO_AUTH_TOKEN",
        None,
        "Twilio auth token: /twilio then requires a valid X-Twilio-Signature (prefer the variable)",
        "TOKEN",
    ),
    _Option(
        "--audiohook-client-secret",
        "STREAMER_AUDIOHOOK_CLIENT_SECRET",
        None,
        "the Genesys AudioHook integration's client secret (base64): /audiohook then requires a valid "
        "request signature (prefer the variable)",
        "SECRET",
    ),
    _Option(
        "--audiosocket-port",
        "STREAMER_AUDIOSOCKET_PORT",
        None,
        "TCP port for Asterisk AudioSocket calls (0: any free port, logged); the protocol has no "
        "authentication: keep it on a private network",
        "PORT",
    ),
    _Option(
        "--audiosocket-host",
        "STREAMER_AUDIOSOCKET_HOST",
        None,
        "interface of the AudioSocket listener (default: --host)",
        "HOST",
    ),
    _Option(
        "--public-url",
        "STREAMER_PUBLIC_URL",
        None,
        "wss://host[:port] that phone platforms dial, when a proxy in front changes the Host their "
        "signatures cover",
        "URL",
    ),
    _Option(
        "--window-left", "STREAMER_WINDOW_LEFT", f"{_DEFAULT_PLAN.left_s:g}", "partial window left context, s"
    ),
    _Option("--window-hop", "STREAMER_WINDOW_HOP", f"{_DEFAULT_PLAN.hop_s:g}", "partial window hop, s"),
    _Option(
        "--window-right",
        "STREAMER_WINDOW_RIGHT",
        f"{_DEFAULT_PLAN.right_s:g}",
        "partial window right context, s",
    ),
    _Option(
        "--vad-aggressiveness",
        "STREAMER_VAD_AGGRESSIVENESS",
        str(_DEFAULT_VAD.aggressiveness),
        "webrtcvad aggressiveness 0-3",
    ),
    _Option(
        "--vad-quiet-db",
        "STREAMER_VAD_QUIET_DB",
        f"{_DEFAULT_VAD.quiet_db:g}",
        "frames this many dB below the speaker's recent level are not speech, whatever the detector says "
        "(ends utterances on background noise); 'off' trusts the detector alone",
    ),
    _Option(
        "--early-final-ms",
        "STREAMER_EARLY_FINAL_MS",
        str(_DEFAULT_VAD.early_final_ms),
        "start the final pass this long before the endpoint is due (discarded if speech resumes); 0 waits",
    ),
    _Option(
        "--endpointing-ms",
        "STREAMER_ENDPOINTING_MS",
        str(_DEFAULT_VAD.endpoint_ms),
        "silence that ends an utterance when the client sends no endpointing; 'false' disables "
        f"(client values below one VAD frame, {_DEFAULT_VAD.frame_ms} ms, are raised to it)",
    ),
    _Option(
        "--max-segment-s",
        "STREAMER_MAX_SEGMENT_S",
        f"{_DEFAULT_VAD.max_segment_s:g}",
        "longest speech segment before it is split, s",
    ),
    _Option(
        "--vad",
        "STREAMER_VAD",
        "auto",
        "speech detector: webrtc, silero (silero-vad, a small neural network: fewer false starts in noise, "
        "several times webrtc's CPU per stream), energy (a loudness threshold, only for the fake:tone "
        "test engine), or auto (energy for fake: models, webrtc otherwise)",
    ),
    _Option(
        "--max-batch",
        "STREAMER_MAX_BATCH",
        "auto",
        "windows per model call; auto: on a GPU the smallest size past which larger batches make a partial "
        f"window less than 10%% cheaper, timed at start-up (at most {AUTO_BATCH_LIMIT}), 1 on a CPU (where "
        "a batch costs the sum of its windows and finals would wait behind it)",
    ),
    _Option(
        "--max-wait-ms",
        "STREAMER_MAX_WAIT_MS",
        f"{_DEFAULT_BATCHER.max_wait_ms:g}",
        "how long a batch waits for company, ms",
    ),
    _Option("--device", "STREAMER_DEVICE", "auto", "auto, cpu, cuda or cuda:N"),
    _Option(
        "--decoder",
        "STREAMER_DECODER",
        EngineOptions().decoder,
        "how finals are decoded: auto (beam search for the built-in model and where a transformers "
        "checkpoint has a language_model/ folder, greedy otherwise), greedy, or beam (lexicon and word LM "
        "beam search: for the built-in model the first start builds a lexicon cache, a few minutes, which "
        "make run does beforehand; for a transformers checkpoint it needs its language_model/); per model "
        "as LANG=DECODER pairs, e.g. 'greedy,he=beam' (a bare value applies to the other models)",
    ),
    _Option(
        "--lexicon-words",
        "STREAMER_LEXICON_WORDS",
        str(EngineOptions().lexicon_words),
        "most frequent English words in the beam decoder's lexicon",
    ),
    _Option("--dtype", "STREAMER_DTYPE", "auto", "auto, float32, bfloat16 or float16"),
    _Option(
        "--threads",
        "STREAMER_THREADS",
        None,
        "torch intra-op threads for transformers models (default: torch's choice); model replicas, one "
        "window each at a time, for the built-in model (default: the cores, up to 4)",
    ),
    _Option("--log-level", "STREAMER_LOG_LEVEL", "info", "debug, info, warning or error"),
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> _Parser:
    parser = _Parser(
        prog="python -m streamer",
        description="Real-time streaming speech recognition server with Deepgram's /v1/listen API.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Every flag can also be set with the environment variable shown; the flag wins.\n"
            "Example: python -m streamer --port 8000 --model en=builtin:en --model he=/models/w2v2-he"
        ),
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="LANG=SPEC",
        help="a model to serve, named by its language: SPEC is builtin:en, fake:tone, a hub id or a folder; "
        "repeatable (env STREAMER_MODEL, comma-separated; default "
        + ",".join(f"{m.name}={m.spec}" for m in DEFAULT_MODELS)
        + ")",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="accept this API key (Authorization: Token KEY); repeatable; with no key at all the server is "
        "open (env STREAMER_API_KEYS, comma-separated; default none)",
    )
    parser.add_argument(
        "--keyterm",
        action="append",
        metavar="[LANG=]TERM",
        help="a keyterm every stream gets (a name, product or phrase its finals favour), for the model "
        "LANG or every model; repeatable (env STREAMER_KEYTERMS, comma-separated; default none)",
    )
    parser.add_argument(
        "--keyterms-file",
        action="append",
        metavar="[LANG=]FILE",
        help="keyterms from a file, one per line as TERM or TERM:BOOST (# comments), for the model LANG or "
        "every model; repeatable (env STREAMER_KEYTERMS_FILE)",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser origin (https://app.example.com) allowed to open streams; repeatable; a request "
        "whose Origin header is not listed gets 403, one without an Origin header (non-browser clients) is "
        "always allowed (env STREAMER_ALLOWED_ORIGINS, comma-separated; default any origin)",
    )
    for opt in _OPTIONS:
        default = "none" if opt.default is None else opt.default
        parser.add_argument(
            opt.flag,
            dest=opt.dest,
            metavar=opt.metavar or opt.dest.upper(),
            help=f"{opt.help} (env {opt.env}; default {default})",
        )
    parser.add_argument(
        "--no-final-pass",
        action="store_true",
        default=None,
        help="make finals from the stitched partial windows instead of one pass per utterance "
        "(cheaper, less exact) (env STREAMER_NO_FINAL_PASS=1)",
    )
    return parser


def _number(kind: Callable[[str], T], what: str) -> Callable[[str, str], T]:
    def convert(source: str, text: str) -> T:
        try:
            return kind(text.strip())
        except ValueError:
            raise ConfigError(f"{source}: expected {what}, got {text!r}") from None

    return convert


_int = _number(int, "an integer")
_float = _number(float, "a number")


def _bool(source: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{source}: expected true or false, got {text!r}")


class _Values:
    """Each option's text from the flag, else the environment, else the default, with its source."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self._args = args
        self._env = environ
        self._by_dest = {o.dest: o for o in _OPTIONS}

    def get(self, dest: str) -> tuple[str, str | None]:
        opt = self._by_dest[dest]
        given = getattr(self._args, dest)
        if given is not None:
            return opt.flag, given
        if opt.env in self._env:
            return opt.env, self._env[opt.env]
        return opt.flag, opt.default

    def convert(self, dest: str, fn: Callable[[str, str], T]) -> T:
        source, text = self.get(dest)
        if text is None:
            raise ConfigError(f"{source}: a value is needed")
        return fn(source, text)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _read_keys(path: str, source: str) -> list[tuple[str, int | None, bool]]:
    """`(key, max_streams or None, watch_all)` per line of an API keys file:
    `KEY [max_streams=N] [watch=all]`.

    Errors name the file and line, never the key (start-up errors end up in logs).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read {path}: {exc.strerror or exc}") from None
    entries: list[tuple[str, int | None, bool]] = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source}: {path} line {number}"
        limit: int | None = None
        watch_all = False
        for option in fields[1:]:
            if option.startswith("#"):
                break  # a comment after the key
            name, sep, value = option.partition("=")
            _check(
                sep == "=" and name in ("max_streams", "watch"),
                where,
                "expected KEY [max_streams=N] [watch=all]",
            )
            if name == "watch":
                _check(value == "all", where, f"watch= takes only 'all', got {value!r}")
                watch_all = True
                continue
            limit = _int(where, value)
            _check(limit >= 1, where, f"max_streams must be >= 1, got {limit}")
        _check("," not in fields[0], where, "API keys must not contain commas")
        entries.append((fields[0], limit, watch_all))
    return entries


def _check(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{source}: {message}")


def build_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Parse flags (argparse errors exit 2) and environment into a ServerConfig; raises ConfigError."""
    env = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    values = _Values(args, env)
    return _config_from(args, values, env)


def _config_from(args: argparse.Namespace, values: _Values, env: Mapping[str, str]) -> ServerConfig:
    if args.model:
        models = tuple(ModelSpec.parse(m) for m in args.model)
    elif env.get("STREAMER_MODEL", "").strip():
        models = tuple(ModelSpec.parse(m) for m in _split(env["STREAMER_MODEL"]))
    else:
        models = DEFAULT_MODELS

    keys: list[str] = list(args.api_key or _split(env.get("STREAMER_API_KEYS", "")))
    key_limits: dict[str, int] = {}
    watchers: set[str] = set()
    source, keys_file = values.get("api_keys_file")
    if keys_file:
        for key, limit, watch_all in _read_keys(keys_file, source):
            keys.append(key)
            if limit is not None:
                key_limits[key] = limit
            if watch_all:
                watchers.add(key)
    origins = args.allowed_origin or _split(env.get("STREAMER_ALLOWED_ORIGINS", ""))
    _, tls_cert = values.get("tls_cert")
    _, tls_key = values.get("tls_key")

    port_source, _ = values.get("port")
    port = values.convert("port", _int)
    _check(0 <= port <= 65535, port_source, f"port must be 0-65535, got {port}")

    limits = Limits(
        max_streams=values.convert("max_streams", _int),
        idle_timeout_s=values.convert("idle_timeout", _float),
        max_message_bytes=values.convert("max_message_bytes", _int),
        max_body_bytes=values.convert("max_body_bytes", _int),
        shutdown_grace_s=values.convert("shutdown_grace", _float),
        drain_timeout_s=values.convert("drain_timeout", _float),
        max_inflight_windows=values.convert("max_inflight", _int),
        max_busy_fraction=values.convert("max_busy", _float),
        max_queue_wait_s=values.convert("max_queue_wait", _float),
        load_window_s=values.convert("load_window", _float),
        max_stream_duration_s=values.convert("max_stream_duration", _float),
        max_outbox=values.convert("max_outbox", _int),
    )

    endpoint_source, endpoint_text = values.get("endpointing_ms")
    endpoint_ms: int | None
    if endpoint_text is not None and endpoint_text.strip().lower() in ("false", "off", "none"):
        endpoint_ms = None
    else:
        endpoint_ms = values.convert("endpointing_ms", _int)
    if endpoint_ms is not None:
        frame_ms = _DEFAULT_VAD.frame_ms
        _check(endpoint_ms >= frame_ms, endpoint_source, f"must be >= {frame_ms} ms (one VAD frame) or false")
    quiet_source, quiet_text = values.get("vad_quiet_db")
    quiet_db: float | None = None
    if quiet_text is None or quiet_text.strip().lower() not in ("off", "false", "none"):
        quiet_db = values.convert("vad_quiet_db", _float)
        _check(quiet_db > 0, quiet_source, "must be > 0 dB or off")
    early_final_ms = values.convert("early_final_ms", _int)
    _check(early_final_ms >= 0, values.get("early_final_ms")[0], "must be >= 0 ms")
    vad = VadConfig(
        aggressiveness=values.convert("vad_aggressiveness", _int),
        endpoint_ms=endpoint_ms,
        max_segment_s=values.convert("max_segment_s", _float),
        quiet_db=quiet_db,
        early_final_ms=early_final_ms,
    )
    no_final_pass = (
        args.no_final_pass
        if args.no_final_pass is not None
        else _bool("STREAMER_NO_FINAL_PASS", env.get("STREAMER_NO_FINAL_PASS", "false"))
    )
    streaming = replace(
        _DEFAULT_STREAMING,
        partial_plan=WindowPlan(
            left_s=values.convert("window_left", _float),
            hop_s=values.convert("window_hop", _float),
            right_s=values.convert("window_right", _float),
        ),
        final_pass=not no_final_pass,
        vad=vad,
    )
    auto_batch = (values.get("max_batch")[1] or "auto").strip().lower() == "auto"
    engine_batch = None if auto_batch else values.convert("max_batch", _int)
    batcher = BatcherConfig(
        # auto: the engine decides (Batcher takes the smaller of the two), up to the most it may choose.
        max_batch=AUTO_BATCH_LIMIT if engine_batch is None else engine_batch,
        max_wait_ms=values.convert("max_wait_ms", _float),
    )
    threads_source, threads_text = values.get("threads")
    threads = None if threads_text in (None, "") else values.convert("threads", _int)
    if threads is not None:
        _check(threads >= 1, threads_source, f"threads must be >= 1, got {threads}")
    decoder_source, decoder_text = values.get("decoder")
    decoder, decoders = "auto", []
    for part in _split((decoder_text or "auto").lower()):
        name, sep, choice = (x.strip() for x in part.rpartition("="))
        _check(
            choice in DECODERS and (not sep or bool(name)),
            decoder_source,
            f"expected {', '.join(DECODERS)} or LANG=DECODER pairs, got {decoder_text!r}",
        )
        if sep:
            served = [m.name for m in models]
            _check(name in served, decoder_source, f"no model {name!r} is served ({', '.join(served)})")
            decoders.append((name, choice))
        else:
            decoder = choice
    lexicon_words = values.convert("lexicon_words", _int)
    _check(lexicon_words >= 1, values.get("lexicon_words")[0], f"must be >= 1, got {lexicon_words}")
    engine = EngineOptions(
        device=values.convert("device", lambda _s, t: t.strip()),
        dtype=values.convert("dtype", lambda _s, t: t.strip()),
        threads=threads,
        max_batch=engine_batch,
        decoder=decoder,
        decoders=tuple(decoders),
        lexicon_words=lexicon_words,
    )
    vad_source, vad_text = values.get("vad")
    vad_choice = (vad_text or "auto").strip().lower()
    _check(
        vad_choice in VAD_CHOICES, vad_source, f"expected one of {', '.join(VAD_CHOICES)}, got {vad_text!r}"
    )
    delivery = DeliveryConfig(
        callback_url=values.get("callback_url")[1] or None,
        callback_secret=values.get("callback_secret")[1] or None,
        callback_hosts=frozenset(h.lower() for h in _split(values.get("callback_hosts")[1] or "")),
    )
    telephony = TelephonyConfig(
        twilio_auth_token=values.get("twilio_auth_token")[1] or None,
        public_url=(values.get("public_url")[1] or "").rstrip("/") or None,
        audiohook_client_secret=values.get("audiohook_client_secret")[1] or None,
        audiosocket_port=(
            None if not values.get("audiosocket_port")[1] else values.convert("audiosocket_port", _int)
        ),
        audiosocket_host=values.get("audiosocket_host")[1] or None,
    )
    workers_source, workers_text = values.get("workers")
    if (workers_text or "").strip().lower() == "auto":
        workers = available_cores()
    else:
        workers = values.convert("workers", _int)
        _check(workers >= 1, workers_source, f"must be >= 1 or auto, got {workers}")
    resume_ttl = values.convert("resume_ttl", _float)
    _check(resume_ttl > 0, values.get("resume_ttl")[0], f"must be > 0 s, got {resume_ttl:g}")
    max_keyterms = values.convert("max_keyterms", _int)
    _check(max_keyterms >= 0, values.get("max_keyterms")[0], f"must be >= 0, got {max_keyterms}")
    keyterm_limits = KeytermLimits(max_terms=max_keyterms)
    keyterms = _keyterms(args, env, {m.name for m in models}, keyterm_limits)
    return ServerConfig(
        host=values.convert("host", lambda _s, t: t.strip()),
        port=port,
        models=models,
        api_keys=frozenset(keys),
        api_key_limits=tuple(sorted(key_limits.items())),
        api_keys_watch_all=frozenset(watchers),
        allowed_origins=frozenset(normalise_origin(o) for o in origins),
        tls_cert=tls_cert or None,
        tls_key=tls_key or None,
        limits=limits,
        streaming=streaming,
        batcher=batcher,
        engine=engine,
        delivery=delivery,
        telephony=telephony,
        resume_secret=(values.get("resume_secret")[1] or "").encode() or None,
        resume_ttl_s=resume_ttl,
        vad=_vad_choice(vad_choice),
        keyterms=keyterms,
        keyterm_limits=keyterm_limits,
        workers=workers,
    )


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _for_model(text: str, models: set[str]) -> tuple[str, str]:
    """`LANG=REST` where LANG is a served model, else every model (`*`) and the whole text."""
    name, sep, rest = text.partition("=")
    if sep and name.strip().lower() in models:
        return name.strip().lower(), rest.strip()
    return "*", text.strip()


def _keyterms(
    args: argparse.Namespace, env: Mapping[str, str], models: set[str], limits: KeytermLimits
) -> tuple[tuple[str, Keyterm], ...]:
    """--keyterm and --keyterms-file (or their environment variables), checked against `limits`."""
    out: list[tuple[str, Keyterm]] = []
    terms = args.keyterm if args.keyterm else _split(env.get("STREAMER_KEYTERMS", ""))
    for text in terms:
        model, term = _for_model(text, models)
        out.append((model, parse_keyterm(term, with_boost=False)))
    files = args.keyterms_file if args.keyterms_file else _split(env.get("STREAMER_KEYTERMS_FILE", ""))
    for text in files:
        model, path = _for_model(text, models)
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"--keyterms-file: cannot read {path}: {exc.strerror or exc}") from None
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if line:
                try:
                    out.append((model, parse_keyterm(line, with_boost=True, param=f"{path}:{n}")))
                except KeytermError as exc:
                    raise ConfigError(f"--keyterms-file {exc}") from None
    for model in {m for m, _ in out}:
        try:
            check_keyterms([t for m, t in out if m in (model, "*")], limits, "--keyterm")
        except KeytermError as exc:
            raise ConfigError(str(exc)) from None
    return tuple(out)


def _vad_choice(text: str) -> VadChoice:
    for choice in VAD_CHOICES:
        if choice == text:
            return choice
    raise ConfigError(f"vad: unknown choice {text!r}")


def _log_level(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    values = _Values(args, env)
    source, text = values.get("log_level")
    level = (text or "info").strip().lower()
    _check(level in LOG_LEVELS, source, f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return int(getattr(logging, level.upper()))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m streamer`: 0 after a clean shutdown, 2 for invalid settings, 1 for start-up failures."""
    env = os.environ
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        level = _log_level(args, env)
        config = _config_from(args, _Values(args, env), env)
    except ConfigError as exc:
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2
    # With workers, every line names its process: "main" (the supervisor) or "w1", "w2", ...
    logging.basicConfig(level=level, format=log_format("main" if config.workers > 1 else None))
    from streamer.server import run  # deferred: --help and bad flags need not import aiohttp

    try:
        run(config)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    except (ModelLoadError, StreamerError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    except OSError as exc:  # port in use, permission denied
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while models load, before the signal handlers are installed
        log.warning("interrupted during start-up")
        return 130
    return 0
