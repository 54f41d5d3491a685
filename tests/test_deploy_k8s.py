"""Kubernetes manifests (deploy/k8s): they render, they are valid, and they mean what they say to the server.

Each overlay is rendered with `kubectl kustomize` (skipped with a message where kubectl is missing) and
checked with kubernetes-validate in strict mode against pinned Kubernetes versions (its schemas ship in
the package, so this works offline). Then the checks a schema cannot make: the container's environment
parses with the server's own CLI (`streamer.cli.build_config`), the probes hit real GET routes of the app
and answer 200, the autoscaler's metrics exist in a real /metrics scrape, the termination grace period
covers preStop + drain + shutdown grace, the rollout never lowers ready capacity, every container (init
containers too) is locked down, and the GPU overlay asks for a GPU and fills the model folder the server
loads from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import io
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml  # type: ignore[import-untyped]
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from streamer.cli import LOG_LEVELS, build_config, main
from streamer.config import ServerConfig
from streamer.engine.base import Engine
from streamer.engine.fake import ToneEngine
from streamer.server import create_app

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes the manifests support (the preStop `sleep` action is on by default from 1.30)
# and a current one. Pinned: the schemas come with the pinned kubernetes-validate package.
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
NAMESPACE = "streamer"
MARGIN_S = 10
"""Seconds the grace period must leave beyond preStop + drain + shutdown grace (process exit, flushes)."""
PENDING_VARIABLES = {"STREAMER_DRAIN_TIMEOUT", "STREAMER_RESUME_SECRET"}
"""Settings of the drain and resume work, which older servers do not know (they ignore unknown variables,
so older images still run); wherever `--help` lists them they must change the parsed config."""
OTHER_VARIABLES = {
    "HOME",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
    "CUDA_CACHE_PATH",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "MODEL_REPO",
    "MODEL_REVISION",
    "MODEL_DIR",
}
BUILTIN_MODELS = {"builtin:en", "hama"}
DUMMY_SECRET = "ZHVtbXktc2VjcmV0LWZvci10ZXN0cw=="  # base64, so that every secret setting accepts it
OTHER_DUMMY_SECRET = "b3RoZXItZHVtbXktc2VjcmV0"
DUMMY_KEY = "dummy-api-key"
LOCKED_DOWN: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

Doc = dict[str, Any]


# ---- rendering ----


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl not found: install kubectl (kustomize is built in) to check deploy/k8s")
    return path


@functools.cache
def _render(directory: str) -> tuple[Doc, ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render(directory: Path) -> list[Doc]:
    return list(_render(str(directory)))


def overlay(name: str) -> list[Doc]:
    return render(K8S / "overlays" / name)


def find(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = find(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    spec: Doc = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def server(docs: list[Doc]) -> Doc:
    containers = pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == ["streamer"]
    container: Doc = containers[0]
    return container


def all_containers(docs: list[Doc]) -> list[Doc]:
    spec = pod_spec(docs)
    return [*spec.get("initContainers", []), *spec["containers"]]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number: '600m' -> 0.6, '2' -> 2.0 (the suffixes used here)."""
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ---- the server's view of the container ----


@functools.cache
def documented_variables() -> frozenset[str]:
    """Every STREAMER_* variable that `python -m streamer --help` documents."""
    out = io.StringIO()
    # COLUMNS: no line wrapping inside a name.
    with (
        mock.patch.dict(os.environ, {"COLUMNS": "1000"}),
        contextlib.redirect_stdout(out),
        pytest.raises(SystemExit),
    ):
        main(["--help"])
    return frozenset(re.findall(r"\b(STREAMER_[A-Z0-9_]+)", out.getvalue()))


def secret_files(docs: list[Doc], container: Doc) -> dict[str, Doc]:
    """Paths inside `container` that a Secret volume provides -> that volume's `secret` source."""
    volumes = {v["name"]: v for v in pod_spec(docs).get("volumes", [])}
    files: dict[str, Doc] = {}
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]].get("secret")
        if source is None:
            continue
        for item in source.get("items", []):
            files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = source
    return files


def env_names(container: Doc) -> list[str]:
    return [var["name"] for var in container.get("env", [])]


def container_env(container: Doc) -> dict[str, str]:
    """The container's variables, Secret references replaced by a dummy secret."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            source = var["valueFrom"]
            assert set(source) == {"secretKeyRef"}, f"{var['name']}: unexpected source {source}"
            env[var["name"]] = DUMMY_SECRET
    return env


def server_argv_env(docs: list[Doc], tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The server's flags and environment as `python -m streamer` gets them in the pod, with the API keys
    file (a Secret) replaced by a file holding DUMMY_KEY."""
    container = server(docs)
    assert "command" not in container, "the image's entrypoint runs `python -m streamer`; set args only"
    env = container_env(container)
    keys = tmp_path / "api-keys"
    keys.write_text(f"{DUMMY_KEY} max_streams=4\n")
    if "STREAMER_API_KEYS_FILE" in env:
        env["STREAMER_API_KEYS_FILE"] = str(keys)
    return [str(a) for a in container.get("args", [])], env


def server_config(docs: list[Doc], tmp_path: Path) -> ServerConfig:
    argv, env = server_argv_env(docs, tmp_path)
    return build_config(argv, env)


def setting(container: Doc, flag: str, variable: str) -> str | None:
    """A setting's text as the server sees it: the flag in args wins over the variable."""
    args = [str(a) for a in container.get("args", [])]
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return container_env(container).get(variable)


def dataclass_values(obj: object, word: str) -> list[object]:
    """Values of the fields, anywhere in a dataclass tree, whose name contains `word`."""
    found: list[object] = []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if word in f.name:
                found.append(value)
            found += dataclass_values(value, word)
    return found


def prestop_seconds(container: Doc) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = " ".join(pre_stop["exec"]["command"])
    found = re.search(r"sleep\(?\s*(\d+(?:\.\d+)?)", command)
    assert found, f"cannot read the preStop sleep from {command!r}"
    return float(found.group(1))


@contextlib.asynccontextmanager
async def app_client(config: ServerConfig, real_models: bool = False) -> AsyncIterator[TestClient]:
    """A test client of the app built from `config`: with the real models (loaded now; only the built-in
    one is at hand offline) or the fake tone engine in their place."""
    engines: dict[str, Engine] | None = None
    if not real_models:
        engines = {m.name: ToneEngine() for m in config.models}
    async with TestClient(TestServer(create_app(config, engines=engines))) as client:
        yield client


async def scraped_samples(config: ServerConfig) -> set[str]:
    """Names of the samples in a real /metrics scrape of the app."""
    async with app_client(config) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        text = await resp.text()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


# ---- schema ----


@pytest.fixture(scope="module")
def kubernetes_validate() -> types.ModuleType:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate not installed: pip install the project's dev extras to check deploy/k8s",
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_passes_strict_schema_validation(
    name: str, version: str, kubernetes_validate: types.ModuleType
) -> None:
    docs = overlay(name)
    assert {d["kind"] for d in docs} == {
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
    }
    assert not find(docs, "Secret"), "secrets are created outside the manifests, never committed"
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc.message}"
            )


def test_strict_validation_catches_a_misspelt_field(kubernetes_validate: types.ModuleType) -> None:
    deployment = one(overlay("cpu"), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment).replace("failureThreshold", "failureTreshold", 1))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.fixture(scope="module")
def with_components(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    """The GPU overlay with the optional KEDA and PodMonitor components, as a user's overlay adds them."""
    folder = tmp_path_factory.mktemp("keda-overlay")
    base = os.path.relpath(K8S, folder)
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"namespace: {NAMESPACE}\n"
        f"resources:\n  - {base}/overlays/gpu\n"
        f"components:\n  - {base}/components/keda\n  - {base}/components/podmonitor\n"
    )
    return render(folder)


def test_optional_components_validate(
    with_components: list[Doc], kubernetes_validate: types.ModuleType
) -> None:
    """Core kinds against the schemas; the CRDs' kinds (no schema offline) by hand: the ScaledObject's
    autoscaler behaviour is the autoscaling/v2 type, so it is validated inside a synthetic HPA."""
    docs = with_components
    assert not find(docs, "HorizontalPodAutoscaler"), "KEDA owns the autoscaler: the base HPA must go"
    unknown = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(doc["kind"])
    assert sorted(unknown) == ["PodMonitor", "ScaledObject"]

    scaled = one(docs, "ScaledObject")
    deployment = one(docs, "Deployment")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    synthetic: Doc = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-behaviour"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "streamer"},
            "minReplicas": scaled["spec"]["minReplicaCount"],
            "maxReplicas": scaled["spec"]["maxReplicaCount"],
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(synthetic, KUBERNETES_VERSIONS[0], strict=True)
    check_slow_scale_down(behavior)

    monitor = one(docs, "PodMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(monitor["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"] for p in server(docs)["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= port_names
    assert {e["path"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"/metrics"}


async def test_keda_queries_read_metrics_the_server_exports(
    with_components: list[Doc], tmp_path: Path
) -> None:
    samples = await scraped_samples(server_config(with_components, tmp_path))
    scaled = one(with_components, "ScaledObject")
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        names = set(re.findall(r"\bstreamer_[a-z_]+", query))
        assert names, query
        assert names <= samples, f"{names - samples} not in a /metrics scrape"
        # The query must look at the namespace the pods run in, or it scales on nothing.
        assert set(re.findall(r'namespace="([^"]*)"', query)) == {scaled["metadata"]["namespace"]}
        assert 0 < float(trigger["metadata"]["threshold"]) < 1


# ---- what the server makes of the container ----


@pytest.mark.parametrize("name", OVERLAYS)
def test_container_settings_parse_with_the_server_cli(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    container = server(docs)
    config = server_config(docs, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.host == "0.0.0.0", "the kubelet's probes and the Service reach the pod's address"
    assert config.port == ports["http"]
    assert DUMMY_KEY in config.api_keys, "STREAMER_API_KEYS_FILE does not load the keys file"
    assert dict(config.api_key_limits) == {DUMMY_KEY: 4}
    assert config.limits.shutdown_grace_s > 0
    level = setting(container, "--log-level", "STREAMER_LOG_LEVEL") or "info"
    assert level in LOG_LEVELS
    # Offline (HF_HUB_OFFLINE=1) a model is the built-in one or a folder on a volume of the pod.
    assert container_env(container).get("HF_HUB_OFFLINE") == "1"
    mounts = [m["mountPath"].rstrip("/") + "/" for m in container["volumeMounts"]]
    for model in config.models:
        assert model.spec in BUILTIN_MODELS or any(model.spec.startswith(m) for m in mounts), model

    # Every variable is one the server (or Python, Hugging Face, CUDA) knows: a typo would be ignored.
    documented = documented_variables()
    for each in all_containers(docs):
        for var in env_names(each):
            if var.startswith("STREAMER_"):
                assert var in documented | PENDING_VARIABLES, f"{name}: {var} is not a server setting"
            else:
                assert var in OTHER_VARIABLES, f"{name}: {var} is not expected in {each['name']}"

    # Where the CLI knows the drain and resume settings, the manifest's variables must reach the config.
    argv, env = server_argv_env(docs, tmp_path)
    for var in PENDING_VARIABLES & documented & set(env):
        changed = dict(env, **{var: "7" if var == "STREAMER_DRAIN_TIMEOUT" else OTHER_DUMMY_SECRET})
        assert build_config(argv, changed) != config, f"{var} has no effect on the server's config"


@pytest.mark.parametrize("name", OVERLAYS)
def test_secrets_come_from_a_secret(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    container = server(docs)
    by_name = {var["name"]: var for var in container["env"]}
    resume = by_name["STREAMER_RESUME_SECRET"]["valueFrom"]["secretKeyRef"]
    assert not resume.get("optional", False), "every replica needs the same resume secret"
    for var in container["env"]:
        if re.search(r"SECRET|TOKEN|API_KEYS$", var["name"]):
            assert "value" not in var, f"{var['name']} must come from a Secret, not the manifest"
    keys_file = by_name["STREAMER_API_KEYS_FILE"]["value"]
    files = secret_files(docs, container)
    assert keys_file in files, f"{keys_file} is not a file of a mounted Secret ({sorted(files)})"
    assert not files[keys_file].get("optional", False), "without its keys file the server would be open"
    assert files[keys_file]["secretName"] == resume["name"]


# ---- probes and metrics against the real app ----


@pytest.mark.parametrize("name", OVERLAYS)
async def test_probes_are_get_routes_that_answer(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    container = server(docs)
    config = server_config(docs, tmp_path)
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    # The CPU overlay serves the built-in model: load it for real, exactly as configured.
    real = all(m.spec in BUILTIN_MODELS for m in config.models)
    async with app_client(config, real_models=real) as client:
        routes = {r.resource.canonical for r in client.app.router.routes() if r.method == "GET"}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] in routes, f"{probe} {get['path']} is not a GET route"
            port = get["port"]
            assert port_names.get(port, port) == config.port, f"{probe} does not probe the server's port"
            resp = await client.get(get["path"])
            assert resp.status == 200, f"{probe} {get['path']} answers {resp.status} on an idle server"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def adapter_rules() -> list[Doc]:
    values = yaml.safe_load((K8S / "autoscaling" / "prometheus-adapter-values.yaml").read_text())
    rules: list[Doc] = values["rules"]["custom"]
    return rules


@pytest.mark.parametrize("name", OVERLAYS)
async def test_autoscaler_reads_metrics_the_server_exports(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    config = server_config(docs, tmp_path)
    samples = await scraped_samples(config)
    hpa = one(docs, "HorizontalPodAutoscaler")
    deployment = one(docs, "Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert hpa["spec"]["minReplicas"] >= 2, "one pod draining must leave another to take new streams"

    published = {}
    for rule in adapter_rules():
        series = re.match(r"\s*([a-z_]+)\{", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        assert series.group(1) in samples, f"adapter rule on {series.group(1)}: not in a /metrics scrape"
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]
        published[rule["name"]["as"]] = series.group(1)

    targets = {}
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods", "per-pod load, averaged over the pods"
        metric_name = metric["pods"]["metric"]["name"]
        assert metric_name in published, f"no prometheus-adapter rule publishes {metric_name}"
        assert metric["pods"]["target"]["type"] == "AverageValue"
        targets[metric_name] = quantity(metric["pods"]["target"]["averageValue"])
    # Targets below the points where a pod refuses new streams, so pods are added before that.
    assert 0 < targets["streamer_stream_load_ratio"] < 1
    assert 0 < targets["streamer_engine_busy_ratio"] < config.limits.max_busy_fraction
    check_slow_scale_down(hpa["spec"]["behavior"])


def check_slow_scale_down(behavior: Doc) -> None:
    down = behavior["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 600, "every removed pod ends its streams: scale down slowly"
    for policy in down["policies"]:
        assert (policy["type"], policy["value"]) == ("Pods", 1), "one pod at a time"
        assert policy["periodSeconds"] >= 300


# ---- termination, rollout, disruption ----


@pytest.mark.parametrize("name", OVERLAYS)
def test_grace_period_covers_prestop_drain_and_shutdown_grace(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    container = server(docs)
    config = server_config(docs, tmp_path)
    drain_text = setting(container, "--drain-timeout", "STREAMER_DRAIN_TIMEOUT")
    assert drain_text is not None, "the drain timeout must be set where the grace period can be checked"
    drain = float(drain_text)
    for value in dataclass_values(config, "drain"):  # once the CLI parses it, it must agree
        if isinstance(value, int | float):
            assert value == drain
    pre_stop = prestop_seconds(container)
    assert pre_stop >= 5, "the endpoint needs a few seconds to leave the load balancers"
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    needed = pre_stop + drain + config.limits.shutdown_grace_s + MARGIN_S
    assert grace >= needed, f"terminationGracePeriodSeconds {grace} < {needed}: the kubelet kills mid-drain"


@pytest.mark.parametrize("name", OVERLAYS)
def test_rollout_and_disruptions_keep_ready_capacity(name: str) -> None:
    docs = overlay(name)
    deployment = one(docs, "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    pdb = one(docs, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    service = one(docs, "Service")
    assert matches(service["spec"]["selector"], pod_labels)
    port_names = {p["name"] for p in server(docs)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_container_is_locked_down(name: str) -> None:
    docs = overlay(name)
    spec = pod_spec(docs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    account = one(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    containers = all_containers(docs)
    assert len(containers) == (2 if name == "gpu" else 1)
    for container in containers:
        context = container.get("securityContext", {})
        for key, expected in LOCKED_DOWN.items():
            assert context.get(key) == expected, f"{container['name']}: securityContext.{key}"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], f"{container['name']}: /tmp must be a writable emptyDir"
        assert container["image"].split(":")[0].endswith("streamer")


def test_network_policy_admits_only_the_server_port() -> None:
    docs = overlay("cpu")
    policy = one(docs, "NetworkPolicy")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": server(docs)["ports"][0]["containerPort"]}]
    assert rule["from"], "an empty `from` would admit everyone"


# ---- GPU and CPU sizing ----


def test_gpu_overlay_runs_one_pod_per_gpu() -> None:
    docs = overlay("gpu")
    spec = pod_spec(docs)
    resources = server(docs)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"], "GPU pods belong on GPU nodes"
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert container_env(server(docs))["STREAMER_DEVICE"].startswith("cuda")
    startup = server(docs)["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "a large model loads for minutes"
    assert one(docs, "Deployment")["spec"]["progressDeadlineSeconds"] >= 1200
    for container in all_containers(overlay("cpu")):
        assert "nvidia.com/gpu" not in str(container.get("resources"))


@pytest.mark.parametrize("name", OVERLAYS)
def test_model_replicas_match_the_cpu_request(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    config = server_config(docs, tmp_path)
    requests = server(docs)["resources"]["requests"]
    assert config.engine.threads == quantity(requests["cpu"]), "one inference thread per requested core"
    assert "memory" in requests


def test_gpu_init_container_fills_the_folder_the_server_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    docs = overlay("gpu")
    spec = pod_spec(docs)
    (init,) = spec["initContainers"]
    config = server_config(docs, tmp_path)
    folders = [m.spec for m in config.models if m.spec.startswith("/")]
    env = container_env(init)
    assert folders == [env["MODEL_DIR"]], "the server must load what the init container fetched"

    volumes = {v["name"]: v for v in spec["volumes"]}

    def mount_of(container: Doc, path: str) -> Doc:
        found = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert len(found) == 1, f"{container['name']}: {path} is on no volume"
        return found[0]

    fill, read = mount_of(init, env["MODEL_DIR"]), mount_of(server(docs), env["MODEL_DIR"])
    assert fill["name"] == read["name"] and not fill.get("readOnly") and read.get("readOnly")
    assert "emptyDir" in volumes[fill["name"]]

    # Run the init container's program with a stand-in for the download, checked against the real
    # signature of huggingface_hub.snapshot_download.
    assert init["command"][:2] == ["python", "-c"]
    program = init["command"][2]
    calls: list[dict[str, Any]] = []
    target = tmp_path / "models" / "en"
    real = inspect.signature(huggingface_hub.snapshot_download)

    def snapshot_download(*args: Any, **kwargs: Any) -> str:
        real.bind(*args, **kwargs)
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "no", "off", ""):
            raise RuntimeError("offline mode: huggingface_hub would not download anything")
        calls.append(kwargs)
        Path(kwargs["local_dir"]).mkdir(parents=True, exist_ok=True)
        return str(kwargs["local_dir"])

    stub = types.ModuleType("huggingface_hub")
    stub.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", stub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what the image (docker/Dockerfile) sets for the server
    for key, value in dict(env, MODEL_DIR=str(target)).items():
        monkeypatch.setenv(key, value)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(program, "fetch-model", "exec"), {"__name__": "__main__"})
    assert len(calls) == 1
    assert calls[0]["repo_id"] == env["MODEL_REPO"]
    assert calls[0]["revision"] == env["MODEL_REVISION"]
    assert calls[0]["local_dir"] == str(target)
    assert target.is_dir()
