"""The container image and the compose stack, checked without building or running anything.

The Dockerfile tests read docker/Dockerfile and .dockerignore (and run the image's health check command
against a stand-in server); they need nothing installed. The compose tests resolve docker/compose.yaml with
`docker-compose config` (Debian's docker-compose, or the `docker compose` plugin) and check what compose
would actually run; they skip with a message where neither is installed. docker/build-local.sh builds and
runs the real image.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE_FILE = DOCKER / "compose.yaml"

REPLICAS = ("streamer-1", "streamer-2")
GPU_REPLICAS = ("streamer-gpu-1", "streamer-gpu-2")


# ------------------------------------------------------------------------------------------- Dockerfile


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs as Docker reads them: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment line inside a continued instruction is skipped by Docker
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def final_stage() -> list[tuple[str, str]]:
    return _final_stage(_instructions(DOCKERFILE.read_text(encoding="utf-8")))


def _one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for k, args in stage if k == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]  # the last one is the one that counts


def test_dockerfile_runs_as_a_fixed_non_root_uid(final_stage: list[tuple[str, str]]) -> None:
    user = _one(final_stage, "USER")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"USER {user!r} is not a numeric uid[:gid]"
    assert int(match.group(1)) != 0 and int(match.group(2) or 1) != 0
    # The uid has a passwd entry (libraries that ask for the user name must not fail).
    passwd = " ".join(args for k, args in final_stage if k == "RUN")
    assert f":x:{match.group(1)}:" in passwd


def test_dockerfile_entrypoint_is_exec_form(final_stage: list[tuple[str, str]]) -> None:
    # Exec form: python is PID 1 and gets SIGTERM itself (a shell would swallow it and skip the drain).
    assert json.loads(_one(final_stage, "ENTRYPOINT")) == ["python", "-m", "streamer"]
    assert _one(final_stage, "STOPSIGNAL") == "SIGTERM"


def test_dockerfile_environment(final_stage: list[tuple[str, str]]) -> None:
    env = _env(final_stage)
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["STREAMER_HOST"] == "0.0.0.0"
    assert env["STREAMER_PORT"] in _one(final_stage, "EXPOSE").split()
    # With a read-only root and a tmpfs on /tmp, every home and cache must live under /tmp.
    for name in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TORCH_HOME"):
        assert env[name] == "/tmp" or env[name].startswith("/tmp/"), f"{name}={env[name]}"
    assert env["PATH"].startswith("/opt/venv/bin:")


def _healthcheck_command(stage: list[tuple[str, str]]) -> list[str]:
    args = _one(stage, "HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    parsed = json.loads(command)
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed)
    return parsed


def test_dockerfile_healthcheck_asks_readyz_with_python(final_stage: list[tuple[str, str]]) -> None:
    command = _healthcheck_command(final_stage)
    assert command[0] == "python", "the health check needs no curl: the image's own python does it"
    assert any("/readyz" in part for part in command)


class _Readyz(BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def readyz_server() -> Iterator[tuple[int, type[_Readyz]]]:
    handler = type("Handler", (_Readyz,), {"paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_dockerfile_healthcheck_fails_when_not_ready(
    final_stage: list[tuple[str, str]], readyz_server: tuple[int, type[_Readyz]]
) -> None:
    # Run the image's health check command itself against a stand-in server on STREAMER_PORT.
    port, handler = readyz_server
    command = [sys.executable, *_healthcheck_command(final_stage)[1:]]
    env = {**os.environ, "STREAMER_PORT": str(port)}
    handler.status = 200
    assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode == 0
    handler.status = 503  # draining, loading or saturated
    assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode != 0
    assert handler.paths == ["/readyz", "/readyz"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the context: the last pattern matching it or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip().strip("/")
        regex = "".join(
            ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else re.escape(token)
            for token in re.split(r"(\*\*|\*|\?)", body)
            if token
        )
        regex = regex.replace(".*/", "(?:.*/)?")  # `**/x` also matches a top-level x
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_and_complete() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "tests/output/run.log", "streamer/__pycache__/cli.pyc",
                 ".mypy_cache/x.json", "streamer.egg-info/PKG-INFO"):  # fmt: skip
        assert _ignored(path, patterns), f"{path} would be sent to the build"
    # Everything the Dockerfile takes from the context (COPY, bind mounts) must be in it: pip install .
    # needs the package sources and the metadata pyproject.toml names (README.md), or the build fails.
    sources = ["pyproject.toml", "README.md", "streamer", "client"]
    for keyword, args in _instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "COPY" and "--from=" not in args:
            words = [w for w in args.split() if not w.startswith("--")]
            sources += [re.sub(r"\$\{\w+:-([^}]+)\}", r"\1", w) for w in words[:-1]]
        if keyword == "RUN":
            binds = re.findall(r"--mount=(\S*type=bind\S*)", args)
            sources += [
                m.group(1) for b in binds if "from=" not in b and (m := re.search(r"source=([^,\s]+)", b))
            ]
    assert "docker/models" in sources and sum(s == "pyproject.toml" for s in sources) == 2
    for source in sources:
        for path in (source, f"{source}/x.py"):
            assert not _ignored(path, patterns), f"COPY {source}: {path} is left out by .dockerignore"


# ------------------------------------------------------------------------------------------- compose


@functools.cache
def _compose() -> tuple[str, ...] | None:
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return (docker, "compose")
    return None


def _compose_run(*args: str, secret: bool = True) -> subprocess.CompletedProcess[str]:
    command = _compose()
    if command is None:
        pytest.skip("no docker-compose (apt-get install docker-compose) and no `docker compose` plugin")
    # The developer's own compose and streamer settings must not change what is checked.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "STREAMER_", "DOCKER_"))}
    if secret:
        env["STREAMER_RESUME_SECRET"] = "test-resume-secret"
    return subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), *args, "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


@functools.cache
def _config(profile: str | None) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    result = _compose_run(*(("--profile", profile) if profile else ()))
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


def _active_profiles(profile: str | None) -> set[str]:
    """Compose's rule: --profile wins; else COMPOSE_PROFILES, here from docker/.env (beside compose.yaml)."""
    if profile:
        return {profile}
    for line in (DOCKER / ".env").read_text(encoding="utf-8").splitlines():
        if line.startswith("COMPOSE_PROFILES="):
            return set(line.partition("=")[2].strip().split(","))
    return set()


def _running(profile: str | None) -> dict[str, dict[str, Any]]:
    """The services `up` starts: those without profiles and those of an active profile. (`docker compose
    config` of the plugin already leaves the others out; Debian's docker-compose 1.29 lists them all.)"""
    active = _active_profiles(profile)
    services: dict[str, dict[str, Any]] = _config(profile)["services"]
    return {name: s for name, s in services.items() if not s.get("profiles") or active & set(s["profiles"])}


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (short or long syntax, as compose prints)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = str(volume).split(":")[:2]
        if str(source).startswith(("/", ".")):
            mounts[target] = Path(source)
    return mounts


def _aliases(name: str, service: dict[str, Any]) -> set[str]:
    networks = service.get("networks") or {}
    default = networks.get("default") or {} if isinstance(networks, dict) else {}
    return {name, *default.get("aliases", [])}


def _seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"unreadable duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


@pytest.mark.parametrize(
    ("profile", "replicas"), [(None, REPLICAS), ("gpu", GPU_REPLICAS)], ids=["default", "gpu"]
)
def test_compose_runs_two_replicas_haproxy_and_prometheus(
    profile: str | None, replicas: tuple[str, ...]
) -> None:
    running = _running(profile)
    assert set(running) == {*replicas, "haproxy", "prometheus"}
    for name in replicas:
        build = running[name].get("build")
        image = running[name]["image"]
        if profile == "gpu":
            assert image.endswith(":cuda")
            devices = running[name]["deploy"]["resources"]["reservations"]["devices"]
            assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
            assert running[name]["environment"]["STREAMER_DEVICE"] == "cuda"
            # GPU replicas answer to the CPU replicas' names: haproxy.cfg and prometheus.yml name them once.
            assert REPLICAS[replicas.index(name)] in _aliases(name, running[name])
        else:
            assert image.endswith(":cpu")
            assert "deploy" not in running[name]
        if build:
            assert build["args"]["VARIANT"] == ("cuda" if profile == "gpu" else "cpu")
            assert Path(build["context"]).resolve() == ROOT
            assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE


@pytest.mark.parametrize("profile", [None, "gpu"], ids=["default", "gpu"])
def test_compose_replicas_are_locked_down(profile: str | None) -> None:
    config = _config(profile)
    dockerfile_user = _one(_final_stage(_instructions(DOCKERFILE.read_text(encoding="utf-8"))), "USER")
    for name in GPU_REPLICAS if profile == "gpu" else REPLICAS:
        service = config["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert str(service["user"]) == dockerfile_user, name
        assert any(str(t).split(":")[0] == "/tmp" for t in service["tmpfs"]), f"{name}: no tmpfs on /tmp"
        models = [v for v in service["volumes"] if isinstance(v, dict) and v.get("target") == "/models"]
        assert models and models[0]["type"] == "volume" and models[0]["read_only"] is True, name
        assert models[0]["source"] in config["volumes"], f"{name}: /models is not a named volume"


@pytest.mark.parametrize("profile", [None, "gpu"], ids=["default", "gpu"])
def test_compose_health_and_shutdown(profile: str | None) -> None:
    for name, service in _running(profile).items():
        if name not in (*REPLICAS, *GPU_REPLICAS):
            continue
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD" and any("/readyz" in part for part in check), name
        assert any(":8000/" in part for part in check), name
        env = service["environment"]
        drain = float(env["STREAMER_DRAIN_TIMEOUT"])
        grace = float(env["STREAMER_SHUTDOWN_GRACE"])
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM", name
        # Docker must not SIGKILL a replica that is still draining or flushing its streams' finals.
        assert _seconds(service["stop_grace_period"]) > drain + grace, name
        assert env["STREAMER_RESUME_SECRET"] == "test-resume-secret", name


def test_compose_refuses_to_start_without_a_shared_resume_secret() -> None:
    result = _compose_run(secret=False)
    assert result.returncode != 0
    assert "STREAMER_RESUME_SECRET" in result.stderr + result.stdout


def _haproxy_variables_required(cfg: str) -> set[str]:
    """The "${VAR}"s of haproxy.cfg outside `.if defined(VAR)` blocks (inside one, VAR may be unset)."""
    required: set[str] = set()
    guards: list[str | None] = []
    for raw in cfg.splitlines():
        line = raw.strip()
        if line.startswith(".if"):
            match = re.fullmatch(r"\.if\s+defined\((\w+)\)", line)
            guards.append(match.group(1) if match else None)
        elif line.startswith(".else"):
            guards[-1] = None
        elif line.startswith(".endif"):
            guards.pop()
        elif not line.startswith("#"):
            required |= {v for v in re.findall(r"\$\{(\w+)\}", line) if v not in guards}
    return required


@pytest.mark.parametrize("profile", [None, "gpu"], ids=["default", "gpu"])
def test_compose_haproxy_serves_docker_haproxy_cfg(profile: str | None) -> None:
    running = _running(profile)
    haproxy = running["haproxy"]
    command = [*haproxy.get("entrypoint", []), *haproxy.get("command", [])]
    cfg_path = command[command.index("-f") + 1]
    mounts = _mounts(haproxy)
    assert mounts[cfg_path].resolve() == DOCKER / "haproxy.cfg"
    env = {k: str(v) for k, v in haproxy["environment"].items()}
    cfg = (DOCKER / "haproxy.cfg").read_text(encoding="utf-8")
    missing = _haproxy_variables_required(cfg) - set(env)
    assert not missing, f"haproxy.cfg needs {sorted(missing)}, which compose does not set"
    # Every replica address HAProxy is given is a replica that runs (by name or alias), on its port.
    names = {n: _aliases(n, s) for n, s in running.items()}
    for key in ("STREAMER_1", "STREAMER_2", "STREAMER_3"):
        if key in env:
            host, _, port = env[key].rpartition(":")
            assert port == "8000" and any(host in aliases for aliases in names.values()), f"{key}={env[key]}"
    # The 503 page the config names is mounted where HAPROXY_ERRORS says.
    if "HAPROXY_ERRORS" in env and "haproxy-503.http" in cfg:
        assert mounts[env["HAPROXY_ERRORS"] + "/haproxy-503.http"].resolve() == DOCKER / "haproxy-503.http"
    # Clients reach HAProxy on the published port it binds.
    bind_port = env["HAPROXY_BIND"].rpartition(":")[2]
    ports = haproxy["ports"]
    targets = {
        str(p["target"]) if isinstance(p, dict) else str(p).split(":")[-1].split("/")[0] for p in ports
    }
    assert bind_port in targets


def test_compose_prometheus_scrapes_the_replicas() -> None:
    yaml = pytest.importorskip("yaml")
    prometheus = _running(None)["prometheus"]
    mounts = _mounts(prometheus)
    command = prometheus.get("command", [])
    config_flag = next(a for a in command if a.startswith("--config.file="))
    config_path = config_flag.partition("=")[2]
    assert mounts[config_path].resolve() == DOCKER / "prometheus.yml"
    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text(encoding="utf-8"))
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "streamer")
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:8000" for name in REPLICAS}
    assert job.get("metrics_path", "/metrics") == "/metrics"
