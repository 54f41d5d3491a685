#!/usr/bin/env bash
# Build the streamer image on a bare Debian 12 machine, as root, and prove it works: install Docker and
# debootstrap when missing, start a daemon when none answers, make a bookworm base image with debootstrap
# (no registry needed), build the CPU image with the host's pip sources, then run it the way production
# should (read-only root, tmpfs /tmp, no capabilities, no new privileges), stream a real recording through
# it, send SIGTERM mid-stream and check the drain: finals arrive, the close code is 1012, the exit code is 0.
# Then build the CUDA variant as far as a machine without a GPU allows. Not part of `make test`.
#
#   sudo docker/build-local.sh                 # everything; the log goes to /tmp/build-local.log too
#   BUILD_CUDA=0 docker/build-local.sh         # skip the CUDA variant (it downloads ~4 GB of wheels)
#
# Settings (environment): IMAGE (streamer), BASE_IMAGE (streamer-base:bookworm, made when missing),
# DEBIAN_MIRROR (default: the host's apt source), WAV (a 16-bit PCM WAV of English speech; default a
# LibriSpeech clip from ../shared/data or $STREAMER_EVAL_DATA), TERM_AT (SIGTERM after 5 s of audio),
# DRAIN (STREAMER_DRAIN_TIMEOUT, 2 s), BUILD_CUDA (1), LOG (/tmp/build-local.log).
# It is idempotent: packages, the daemon and the base image are reused when present, and Docker's build
# cache makes a rebuild with unchanged sources quick.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-streamer}
BASE_IMAGE=${BASE_IMAGE:-streamer-base:bookworm}
DRAIN=${DRAIN:-2}
TERM_AT=${TERM_AT:-5}
BUILD_CUDA=${BUILD_CUDA:-1}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
LOG=${LOG:-/tmp/build-local.log}
CUDA_MIN_FREE_GB=${CUDA_MIN_FREE_GB:-40}

exec > >(tee "$LOG") 2>&1

RESULTS=()
FAILED=0
T0=$(date +%s)
say() { printf '\n==> [%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
pass() { RESULTS+=("PASS  $1${2:+: $2}"); echo "PASS  $1${2:+: $2}"; }
fail() { RESULTS+=("FAIL  $1${2:+: $2}"); echo "FAIL  $1${2:+: $2}"; FAILED=1; }
skip() { RESULTS+=("SKIP  $1${2:+: $2}"); echo "SKIP  $1${2:+: $2}"; }
judge() {  # judge NAME PASS-DETAIL FAIL-DETAIL TEST...
    local name=$1 good=$2 bad=$3
    shift 3
    if "$@"; then pass "$name" "$good"; else fail "$name" "$bad"; fi
}
note() { RESULTS+=("INFO  $1${2:+: $2}"); echo "INFO  $1${2:+: $2}"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
die() { echo "FAIL  $*"; exit 1; }

WORK=$(mktemp -d /var/tmp/streamer-build.XXXXXX)
CONTAINERS=()
SERVER_PID=
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    local c
    for c in "${CONTAINERS[@]}"; do "$DOCKER" rm -f "$c" >/dev/null 2>&1 || true; done
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
DOCKER=docker
trap cleanup EXIT

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"

# ---------------------------------------------------------------------------------------------- packages
say "packages: docker.io, debootstrap, docker-compose"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt log: $WORK/apt.log)"
    { apt-get -o DPkg::Lock::Timeout=600 update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends "${missing[@]}"; } > "$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log"; die "apt-get install ${missing[*]} failed"; }
    echo "installed: $(dpkg-query -W -f '${Package} ${Version}, ' "${missing[@]}")"
else
    echo "all present"
fi

# A BuildKit build needs either the buildx plugin or a Docker CLI older than 23 (whose own `docker build`
# still speaks BuildKit with DOCKER_BUILDKIT=1); Debian 12's docker.io is 20.10 and has no buildx package.
BUILD=()
for c in $(type -ap docker); do
    if "$c" buildx version >/dev/null 2>&1; then DOCKER=$c; BUILD=("$c" buildx build --load); break; fi
done
if [ ${#BUILD[@]} = 0 ]; then
    for c in $(type -ap docker); do
        major=$("$c" --version | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
        if [ -n "$major" ] && [ "$major" -lt 23 ]; then
            DOCKER=$c
            BUILD=(env DOCKER_BUILDKIT=1 "$c" build)
            break
        fi
    done
fi
[ ${#BUILD[@]} -gt 0 ] || die "no docker CLI can run a BuildKit build (install the buildx plugin)"
echo "docker CLI: $DOCKER ($("$DOCKER" --version)); build: ${BUILD[*]}"

# ---------------------------------------------------------------------------------------------- daemon
say "docker daemon"
if "$DOCKER" info >/dev/null 2>&1; then
    echo "a daemon answers: $("$DOCKER" info --format '{{.ServerVersion}}, storage {{.Driver}}')"
else
    # vfs: works on any filesystem (overlay cannot nest here); no iptables and no bridge: containers use
    # the host's network (--network host), which is all this check needs.
    echo "starting dockerd --storage-driver=vfs --iptables=false --bridge=none (log: /var/log/dockerd-streamer.log)"
    setsid nohup dockerd --storage-driver=vfs --iptables=false --bridge=none \
        >/var/log/dockerd-streamer.log 2>&1 < /dev/null &
    for _ in $(seq 120); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.5; done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not answer within 60 s (see /var/log/dockerd-streamer.log)"
    echo "dockerd is up: $("$DOCKER" info --format '{{.ServerVersion}}, storage {{.Driver}}')"
fi

# ---------------------------------------------------------------------------------------------- base image
say "base image $BASE_IMAGE"
if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "reusing $BASE_IMAGE ($("$DOCKER" image inspect --format '{{.Created}}' "$BASE_IMAGE"))"
else
    # The mirror the host itself uses (deb822 or one-line format), so no mirror name is baked in here.
    mirror=${DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
        mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    fi
    if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
        mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list)
    fi
    [ -n "$mirror" ] || die "no Debian mirror found in the host's apt sources; set DEBIAN_MIRROR"
    started=$(now)
    echo "debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    # apt inside builds uses the host's sources (security and updates included) when they are bookworm's.
    if grep -qs bookworm /etc/apt/sources.list.d/debian.sources; then
        cp /etc/apt/sources.list.d/debian.sources "$WORK/rootfs/etc/apt/sources.list.d/debian.sources"
        rm -f "$WORK/rootfs/etc/apt/sources.list"
    fi
    rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/*.bin \
        "$WORK"/rootfs/var/cache/apt/archives/*.deb
    tar -C "$WORK/rootfs" --numeric-owner -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
    note "base image made" "$BASE_IMAGE in $(since "$started") s"
fi

# ---------------------------------------------------------------------------------------------- pip sources
# pip inside the build should see the sources pip sees here: its configuration files and PIP_* variables
# (`pip config list` merges both). Remote indexes are passed as they are; local ones (a find-links folder
# holding a CPU torch wheel, file:// indexes) are served read-only on 127.0.0.1 for the build's duration,
# which the build reaches through --network host. The CA bundle pip trusts goes in as a secret.
# Constraint files are the host's own business and are not passed.
say "pip sources for the build"
host_pip=()
if python3 -m pip --version >/dev/null 2>&1; then
    host_pip=(python3 -m pip)
elif [ -x "$REPO/.venv/bin/pip" ]; then
    host_pip=("$REPO/.venv/bin/pip")
fi
PIP_CONF="$WORK/pip.conf"
mkdir -p "$WORK/serve"
port_of() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SERVE_PORT=$(port_of)
if [ ${#host_pip[@]} -gt 0 ]; then
    "${host_pip[@]}" config list > "$WORK/pip-config.txt" 2>/dev/null || true
else
    : > "$WORK/pip-config.txt"
fi
CA_BUNDLE=$(python3 - "$WORK/pip-config.txt" "$PIP_CONF" "$WORK/serve" "$SERVE_PORT" <<'PY'
import os
import sys
from urllib.parse import urlparse

listing, out, serve, port = sys.argv[1:5]
values: dict[str, str] = {}
for line in open(listing, encoding="utf-8"):
    name, _, value = line.strip().partition("=")
    section, _, key = name.rpartition(".")
    if section in ("global", "install", ":env:") and value:
        # Later lines win: `pip config list` prints the files' merged values, then PIP_* (":env:").
        values[key] = value.strip("'\"")

exposed: dict[str, str] = {}


def serve_path(path: str) -> str:
    """An http:// URL on 127.0.0.1 for a local folder (symlinked into the served tree)."""
    path = os.path.realpath(path)
    if path not in exposed:
        name = f"src{len(exposed)}"
        os.symlink(path, os.path.join(serve, name))
        exposed[path] = name
    return f"http://127.0.0.1:{port}/{exposed[path]}/"


def translate(item: str, index: bool) -> str | None:
    if item.startswith(("http://", "https://")):
        return item
    path = urlparse(item).path if item.startswith("file:") else item
    if not os.path.isdir(path):
        print(f"  dropped {item}: not a folder here", file=sys.stderr)
        return None
    if index:
        # A PEP 503 tree links its files relatively (../../files/x.whl): serve the index's parent too.
        parent = os.path.dirname(os.path.realpath(path).rstrip("/"))
        return serve_path(parent) + os.path.basename(path.rstrip("/")) + "/"
    return serve_path(path)


lines = ["[global]"]
for key in ("index-url", "extra-index-url", "find-links"):
    if key in values:
        kept = [t for t in (translate(i, key != "find-links") for i in values[key].split()) if t]
        if kept:
            lines.append(f"{key} = " + "\n    ".join(kept))
for key in ("trusted-host", "timeout", "default-timeout", "retries"):
    if key in values:
        lines.append(f"{key} = {values[key]}")
ca = values.get("cert") or ""
if not os.path.isfile(ca):
    ca = "/etc/ssl/certs/ca-certificates.crt" if os.path.isfile("/etc/ssl/certs/ca-certificates.crt") else ""
if ca:
    lines.append("cert = /run/secrets/pip_ca")
with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
for path, name in exposed.items():
    print(f"  serving {path} as http://127.0.0.1:{port}/{name}/", file=sys.stderr)
print(ca)
PY
)
echo "pip configuration for the build (secret pip_conf):"
sed 's/^/  | /' "$PIP_CONF"
SECRETS=(--secret "id=pip_conf,src=$PIP_CONF")
if [ -n "$CA_BUNDLE" ]; then
    echo "CA bundle (secret pip_ca): $CA_BUNDLE"
    SECRETS+=(--secret "id=pip_ca,src=$CA_BUNDLE")
fi
if [ -n "$(ls -A "$WORK/serve")" ]; then
    python3 -m http.server --bind 127.0.0.1 --directory "$WORK/serve" "$SERVE_PORT" \
        > "$WORK/http.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$SERVE_PORT/', timeout=1)" \
            2>/dev/null && break
        sleep 0.2
    done
fi

# ---------------------------------------------------------------------------------------------- CPU image
build() {  # build VARIANT TAG [extra args...]
    local variant=$1 tag=$2
    shift 2
    "${BUILD[@]}" --network host --progress plain "${SECRETS[@]}" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VARIANT=$variant" \
        --build-arg "TORCH_VERSION=$TORCH_VERSION" "$@" \
        -f "$REPO/docker/Dockerfile" -t "$tag" "$REPO"
}
image_mb() { "$DOCKER" image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f", $1 / 1e6 }'; }

say "build $IMAGE:cpu"
started=$(now)
if build cpu "$IMAGE:cpu"; then
    pass "build cpu image" "$IMAGE:cpu in $(since "$started") s, $(image_mb "$IMAGE:cpu") MB"
else
    fail "build cpu image" "after $(since "$started") s (the build output is above)"
fi

# ---------------------------------------------------------------------------------------------- checks
WAV=${WAV:-}
if [ -z "$WAV" ]; then
    for d in "${STREAMER_EVAL_DATA:-}" "$REPO/../shared/data"; do
        if [ -n "$d" ] && [ -f "$d/en/ls_2412-153948-0000.wav" ]; then WAV="$d/en/ls_2412-153948-0000.wav"; break; fi
    done
fi

free_port() { port_of; }
wait_ready() {  # wait_ready CONTAINER PORT SECONDS -> 0 when /readyz says 200
    local c=$1 port=$2 limit=$3
    for _ in $(seq $((limit * 4))); do
        if [ "$("$DOCKER" inspect --format '{{.State.Running}}' "$c" 2>/dev/null)" != true ]; then return 1; fi
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=1)" \
            2>/dev/null; then return 0; fi
        sleep 0.25
    done
    return 1
}
epoch_of() {  # epoch_of CONTAINER StartedAt|FinishedAt
    date -d "$("$DOCKER" inspect --format "{{.State.$2}}" "$1")" +%s.%N
}
RUN_FLAGS=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges --network host)

if "$DOCKER" image inspect "$IMAGE:cpu" >/dev/null 2>&1; then
    say "image configuration"
    user=$("$DOCKER" image inspect --format '{{.Config.User}}' "$IMAGE:cpu")
    entry=$("$DOCKER" image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE:cpu")
    health=$("$DOCKER" image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE:cpu")
    envs=$("$DOCKER" image inspect --format '{{join .Config.Env " "}}' "$IMAGE:cpu")
    case "$user" in 10001*) pass "non-root user" "$user" ;; *) fail "non-root user" "got '$user'" ;; esac
    judge "exec-form entrypoint" "$entry" "$entry" [ "$entry" = '["python","-m","streamer"]' ]
    case "$health" in *"/readyz"*) pass "healthcheck on /readyz" ;; *) fail "healthcheck on /readyz" "$health" ;; esac
    case " $envs " in *" HF_HUB_OFFLINE=1 "*" STREAMER_HOST=0.0.0.0 "*) pass "offline, listens on 0.0.0.0" ;;
        *) fail "offline, listens on 0.0.0.0" "$envs" ;; esac

    # -- the built-in model, a real recording, SIGTERM mid-stream
    say "run $IMAGE:cpu read-only with builtin:en; stream a recording; SIGTERM mid-stream"
    port=$(free_port)
    name="streamer-check-$$"
    started=$(now)
    "$DOCKER" run -d --name "$name" "${RUN_FLAGS[@]}" -e STREAMER_PORT="$port" \
        -e STREAMER_DRAIN_TIMEOUT="$DRAIN" "$IMAGE:cpu" >/dev/null
    CONTAINERS+=("$name")
    if wait_ready "$name" "$port" 180; then
        # With vfs, creating a container copies the whole image, so time the server from its own start.
        boot=$(awk -v a="$(epoch_of "$name" StartedAt)" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
        pass "ready (/readyz 200)" "$boot s after the process started ($(since "$started") s after docker run), port $port"
    else
        fail "ready (/readyz 200)" "not within 180 s"
        "$DOCKER" logs "$name" 2>&1 | tail -20
    fi
    health=starting
    for _ in $(seq 60); do
        health=$("$DOCKER" inspect --format '{{.State.Health.Status}}' "$name" 2>/dev/null || echo gone)
        [ "$health" = starting ] || break
        sleep 0.5
    done
    judge "docker health" "$health (the image's HEALTHCHECK on /readyz)" "$health" [ "$health" = healthy ]

    if [ -z "$WAV" ]; then
        skip "stream and drain" "no recording: set WAV=a 16-bit PCM WAV of English speech"
    else
        # A real-time-paced Deepgram client in the image's own Python (websockets is a dependency): it
        # prints when TERM_AT seconds of audio are sent, every final as it comes, and the close code; times
        # are wall-clock epochs, comparable with the host's.
        cat > "$WORK/stream_check.py" <<'PY'
import asyncio
import json
import sys
import time
import wave

import websockets


async def main(url: str, path: str, mark_s: float) -> None:
    with wave.open(path, "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        audio = w.readframes(w.getnframes())
    assert width == 2, "16-bit PCM WAV needed"
    query = f"encoding=linear16&sample_rate={rate}&channels={channels}&interim_results=false"
    step = rate * channels * width // 10  # 100 ms
    started = time.monotonic()

    async with websockets.connect(f"{url}/v1/listen?{query}") as ws:

        async def send() -> None:
            for i, at in enumerate(range(0, len(audio), step)):
                await asyncio.sleep(max(0.0, started + i * 0.1 - time.monotonic()))
                await ws.send(audio[at : at + step])
                if abs((i + 1) * 0.1 - mark_s) < 0.05:
                    print(f"SENT at={time.time():.3f} audio={mark_s:.1f}s", flush=True)
            print(f"AUDIO_END at={time.time():.3f}", flush=True)
            await ws.send(json.dumps({"type": "CloseStream"}))

        sender = asyncio.create_task(send())
        try:
            async for message in ws:
                event = json.loads(message)
                if event.get("type") == "Results" and event.get("is_final"):
                    text = event["channel"]["alternatives"][0]["transcript"]
                    end = event["start"] + event["duration"]
                    print(f"FINAL at={time.time():.3f} audio={event['start']:.2f}-{end:.2f}s {text!r}", flush=True)
                elif event.get("type") == "Metadata":
                    print(f"METADATA at={time.time():.3f} duration={event.get('duration')}", flush=True)
        except websockets.ConnectionClosed:
            pass
        finally:
            sender.cancel()
        print(f"CLOSE at={time.time():.3f} code={ws.close_code} reason={ws.close_reason!r}", flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
PY
        echo "recording: $WAV ($(python3 -c "import sys, wave; w = wave.open(sys.argv[1]); print(f'{w.getnframes() / w.getframerate():.1f}')" "$WAV") s); SIGTERM after ${TERM_AT} s of it"
        "$DOCKER" run --rm -i --network host --read-only --cap-drop ALL --security-opt no-new-privileges \
            -v "$WAV:/audio.wav:ro" --entrypoint python "$IMAGE:cpu" - "ws://127.0.0.1:$port" /audio.wav "$TERM_AT" \
            < "$WORK/stream_check.py" > "$WORK/stream.out" 2> "$WORK/stream.err" &
        client=$!
        for _ in $(seq 1200); do
            grep -q '^SENT\|^CLOSE' "$WORK/stream.out" 2>/dev/null && break
            kill -0 "$client" 2>/dev/null || break
            sleep 0.1
        done
        term=$(now)
        "$DOCKER" kill --signal TERM "$name" >/dev/null
        echo "SIGTERM sent (drain timeout $DRAIN s)"
        sleep 0.3
        ready_code=$("$DOCKER" exec "$name" python -c "import urllib.request, urllib.error
try:
    print(urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)" 2>/dev/null || echo gone)
        # What the read-only container wrote while it worked: only /tmp could take anything.
        written=$("$DOCKER" exec "$name" find /tmp -mindepth 1 -maxdepth 3 2>/dev/null | tr '\n' ' ' || true)
        wait "$client" || true
        exit_code=$("$DOCKER" wait "$name")
        finished=$(epoch_of "$name" FinishedAt)
        echo "--- client (at = seconds after SIGTERM)"
        awk -v t="$term" '{ if (match($0, /at=[0-9.]+/)) { v = substr($0, RSTART + 3, RLENGTH - 3); sub(/at=[0-9.]+/, sprintf("at=%+.2f", v - t)) } print }' \
            "$WORK/stream.out"
        cat "$WORK/stream.err"
        echo "--- server log (tail)"
        "$DOCKER" logs "$name" 2>&1 | grep -v 'GET /readyz' | tail -6
        after() { awk -v t="$term" '{ if (match($0, /at=[0-9.]+/) && substr($0, RSTART + 3, RLENGTH - 3) + 0 > t + 0) n++ } END { print n + 0 }'; }
        finals=$(grep -c '^FINAL' "$WORK/stream.out" || true)
        finals_after=$(grep '^FINAL' "$WORK/stream.out" | after)
        words=$(grep '^FINAL' "$WORK/stream.out" | sed "s/^[^'\"]*['\"]\(.*\)['\"]$/\1/" | wc -w)
        code=$(sed -n 's/^CLOSE .*code=\([0-9]*\).*/\1/p' "$WORK/stream.out")
        close_at=$(sed -n 's/^CLOSE at=\([0-9.]*\).*/\1/p' "$WORK/stream.out")
        closed=$(awk -v a="$term" -v b="${close_at:-0}" 'BEGIN { printf "%.2f", b - a }')
        stopped=$(awk -v a="$term" -v b="$finished" 'BEGIN { printf "%.2f", b - a }')
        if grep -q '^AUDIO_END' "$WORK/stream.out"; then
            fail "SIGTERM came mid-stream" "the recording ended before the close: use a longer WAV or a smaller DRAIN"
        else
            pass "SIGTERM came mid-stream" "after ${TERM_AT} s of audio; the stream was still sending when it closed"
        fi
        judge "not ready while draining" "/readyz $ready_code 0.3 s after SIGTERM" "/readyz answered $ready_code" \
            [ "$ready_code" = 503 ]
        judge "final transcripts received" "$finals finals ($finals_after flushed after SIGTERM), $words words" \
            "$finals finals ($finals_after after SIGTERM), $words words" \
            [ $((finals >= 1 && words >= 1 && finals_after >= 1)) = 1 ]
        judge "close code 1012" "${closed} s after SIGTERM (drain $DRAIN s)" "got '${code:-none}'" [ "$code" = 1012 ]
        judge "container exit code 0" "the process ended ${stopped} s after SIGTERM" "got $exit_code" \
            [ "$exit_code" = 0 ]
        if [ -z "$written" ]; then
            pass "read-only root, nothing written" "/tmp (the only writable path) stayed empty"
        else
            note "files the server wrote in /tmp" "$written"
        fi
    fi
    "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true

    # -- a transformers model from a mounted read-only /models (a tiny random checkpoint; offline)
    say "run $IMAGE:cpu with a model folder mounted read-only at /models"
    mkdir -p "$WORK/models"
    if "$DOCKER" run --rm --network host -v "$WORK/models:/out" -v "$REPO/tests:/tests:ro" --user 0 \
        --entrypoint python "$IMAGE:cpu" -c "import sys; sys.path.insert(0, '/'); \
from tests.tiny_models import build_tiny_model; build_tiny_model('/out/tiny-en', arch='wav2vec2', alphabet='english')" \
        > "$WORK/tiny.log" 2>&1; then
        chmod -R a+rX "$WORK/models"
        port=$(free_port)
        name="streamer-model-$$"
        started=$(now)
        "$DOCKER" run -d --name "$name" "${RUN_FLAGS[@]}" -v "$WORK/models:/models:ro" -e STREAMER_PORT="$port" \
            -e STREAMER_MODEL=en=/models/tiny-en "$IMAGE:cpu" >/dev/null
        CONTAINERS+=("$name")
        if wait_ready "$name" "$port" 120; then
            models=$(python3 -c "import json, urllib.request; \
print([m.get('name') for m in json.load(urllib.request.urlopen('http://127.0.0.1:$port/v1/models', timeout=5)).get('stt', [])])" 2>&1)
            boot=$(awk -v a="$(epoch_of "$name" StartedAt)" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
            pass "mounted model served" "STREAMER_MODEL=en=/models/tiny-en ready $boot s after the process started ($(since "$started") s after docker run); /v1/models: $models"
        else
            fail "mounted model served" "not ready within 120 s"
        fi
        "$DOCKER" logs "$name" 2>&1 | tail -5
        "$DOCKER" kill --signal TERM "$name" >/dev/null 2>&1 || true
        exit_code=$("$DOCKER" wait "$name")
        judge "mounted model: exit code 0 after SIGTERM" "" "got $exit_code" [ "$exit_code" = 0 ]
        "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
    else
        cat "$WORK/tiny.log"
        fail "mounted model served" "could not make the tiny model"
    fi
fi

# ---------------------------------------------------------------------------------------------- CUDA image
say "CUDA variant"
if [ "$BUILD_CUDA" != 1 ]; then
    skip "build cuda image" "BUILD_CUDA=$BUILD_CUDA"
else
    free_gb=$(df -P --block-size=1G /var/lib/docker 2>/dev/null | awk 'NR == 2 { print $4 }')
    if [ "${free_gb:-0}" -lt "$CUDA_MIN_FREE_GB" ]; then
        skip "build cuda image" "$free_gb GB free under /var/lib/docker, want $CUDA_MIN_FREE_GB (vfs copies every layer)"
    else
        # The default Linux torch wheel brings its own CUDA runtime (nvidia-* wheels), so the same base works;
        # only the driver comes from the host at run time (--gpus all).
        started=$(now)
        if build cuda "$IMAGE:cuda"; then
            pass "build cuda image" "$IMAGE:cuda in $(since "$started") s, $(image_mb "$IMAGE:cuda") MB"
            # One container for both checks: with vfs every container is a full copy of the image.
            port=$(free_port)
            name="streamer-cuda-$$"
            "$DOCKER" run -d --name "$name" "${RUN_FLAGS[@]}" -e STREAMER_PORT="$port" "$IMAGE:cuda" >/dev/null
            CONTAINERS+=("$name")
            if wait_ready "$name" "$port" 180; then pass "cuda image serves builtin:en without a GPU"
            else fail "cuda image serves builtin:en without a GPU"; "$DOCKER" logs "$name" 2>&1 | tail -10; fi
            probe=$("$DOCKER" exec "$name" python -W ignore -c \
                "import torch; print(f'torch {torch.__version__} CUDA {torch.version.cuda} available={torch.cuda.is_available()}')" 2>&1 | tail -1)
            case "$probe" in
                *"CUDA None"*) fail "cuda image has a CUDA torch" "$probe" ;;
                *CUDA*) pass "cuda image has a CUDA torch" "$probe (no GPU here)" ;;
                *) fail "cuda image has a CUDA torch" "$probe" ;;
            esac
            "$DOCKER" kill --signal TERM "$name" >/dev/null 2>&1 || true
            exit_code=$("$DOCKER" wait "$name" 2>/dev/null || echo gone)
            judge "cuda image: exit code 0 after SIGTERM" "" "got $exit_code" [ "$exit_code" = 0 ]
            "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
            note "cuda image on a GPU" "not run: this machine has no GPU"
            note "disk" "docker rmi $IMAGE:cuda && docker builder prune -af gives back the CUDA image and build cache"
        else
            fail "build cuda image" "after $(since "$started") s (the build output is above)"
        fi
    fi
fi

# ---------------------------------------------------------------------------------------------- summary
say "summary ($(($(date +%s) - T0)) s in all)"
df -h /var/lib/docker | awk 'NR == 2 { print "disk under /var/lib/docker: " $3 " used, " $4 " free" }'
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($IMAGE|${BASE_IMAGE%%:*}):" || true
printf '%s\n' "${RESULTS[@]}"
if [ "$FAILED" = 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
exit "$FAILED"
