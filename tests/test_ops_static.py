"""Operations files are valid without a running stack: compose, Dockerfiles, Prometheus config, alert
rules and their unit tests, Grafana dashboards and the metric names they rely on.

Needs ``promtool`` (``scripts/install_debian.sh prometheus``); a missing promtool fails these tests, it
does not skip them. The helpers that find metric names are shared with tests/test_ops_live.py.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import promql_parser
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
PROMETHEUS_DIR = ROOT / "configs" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "tests" / "alerts_test.yml"
GRAFANA_DIR = ROOT / "configs" / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
METRICS_MODULE = ROOT / "service" / "monitoring" / "metrics.py"
OPERATE_DOC = ROOT / "docs" / "operate.md"
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "loadtests" / "Dockerfile"]

# Series Prometheus itself makes, not hookserve.
PROMETHEUS_BUILTINS = {"up"}
# Grafana's built-in interval variables, replaced by a duration so expressions parse as plain PromQL.
GRAFANA_DURATIONS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


# --- helpers shared with test_ops_live.py ----------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run scripts/install_debian.sh prometheus")
    return path


def python_tool(name: str) -> str:
    """A console script installed with the dev extras (next to this Python, or on PATH)."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: pip install -e '.[dev]'")
    return path


def declared_metrics() -> dict[str, str]:
    """Metric name -> type (counter, gauge, histogram, summary) for each metric in metrics.py."""
    kinds = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary"}
    declared = {}
    for node in ast.walk(ast.parse(METRICS_MODULE.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in kinds
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            declared[node.args[0].value] = kinds[node.func.id]
    return declared


def exposed_names(declared: dict[str, str]) -> set[str]:
    """The sample names prometheus-client exposes for the declared metrics."""
    names = set()
    for name, kind in declared.items():
        if kind == "counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif kind == "summary":
            names.update({name, f"{name}_sum", f"{name}_count"})
        else:
            names.add(name)
    return names


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana variables replaced, so it parses as PromQL."""
    for variable, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def dashboards() -> list[dict]:
    return [json.loads(path.read_text()) for path in DASHBOARD_FILES]


def panels(dashboard: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every query in the dashboards: panel targets and query variables."""
    expressions = []
    for dashboard in dashboards():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                where = f"{dashboard['uid']} / {panel['title']} / {target['refId']}"
                expressions.append((where, grafana_to_promql(target["expr"])))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
            assert match, (
                f"{dashboard['uid']} variable {variable['name']}: expected label_values(selector, label)"
            )
            expressions.append((f"{dashboard['uid']} / ${variable['name']}", grafana_to_promql(match[1])))
    return expressions


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]


def alert_expressions() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for rule in alert_rules()]


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (by name or by a __name__ matcher)."""
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            names.update(
                m.value
                for m in node.matchers.matchers
                if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal
            )

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used, over every dashboard and alert expression."""
    used: dict[str, set[str]] = {}
    for where, expr in dashboard_expressions() + alert_expressions():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def run(*command: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=ROOT, timeout=120)


# --- docker compose ---------------------------------------------------------------------------------


def compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path: Path) -> None:
    result = run(python_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_plain_compose_up_starts_no_load_generator() -> None:
    services = compose()["services"]
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"hookserve", "prometheus", "grafana", "jaeger"}
    assert all(services[name]["profiles"] == ["load"] for name in ("locust-master", "locust-worker"))


def test_the_service_sends_its_traces_to_the_stacks_jaeger() -> None:
    services = compose()["services"]
    environment = services["hookserve"]["environment"]
    assert "jaeger:4318" in environment["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert environment["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert any(port.endswith(":16686") for port in services["jaeger"]["ports"])


def test_load_generators_wait_for_a_healthy_service() -> None:
    services = compose()["services"]
    assert "healthcheck" in services["hookserve"] and "healthcheck" in services["prometheus"]
    for name in ("locust-master", "locust-worker"):
        assert services[name]["depends_on"]["hookserve"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not source.startswith("./reports"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_gpu_override_reserves_an_nvidia_gpu_and_serves_the_gpu_config() -> None:
    service = compose(COMPOSE_GPU)["services"]["hookserve"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "configs/gpu.yaml" in service["command"]


def test_prometheus_scrapes_the_compose_service_and_grafana_reads_prometheus() -> None:
    scrape = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    assert scrape["hookserve"]["static_configs"][0]["targets"] == ["hookserve:8000"]
    datasource = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "hookserve.yml").read_text())
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./configs/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


# --- Dockerfiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(path: Path) -> None:
    result = run(python_tool("hadolint"), path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_image_runs_as_non_root_under_tini_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"', text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n.*CMD \[\"python\".*/health", text, re.MULTILINE)
    assert "ARG TORCH_INDEX_URL" in text


# --- Prometheus -------------------------------------------------------------------------------------


def test_prometheus_config_is_valid() -> None:
    result = run(promtool(), "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid() -> None:
    result = run(promtool(), "check", "rules", ALERT_RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = run(promtool(), "test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for rule in alert_rules():
        assert cases.get(rule["alert"]) == {True, False}, f"{rule['alert']}: test it firing and not firing"


def test_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "HookserveTargetDown",
        "HookserveHighErrorRate",
        "HookserveLatencyP99High",
        "HookserveNonFiniteActivations",
        "HookserveActivationDrift",
        "HookserveForwardBypass",
        "HookserveMonitorOverheadHigh",
    } <= names


def test_every_alert_says_what_to_do_and_links_its_runbook() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATE_DOC.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        annotations = rule["annotations"]
        assert {"summary", "description", "action", "runbook_url"} <= annotations.keys(), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        path, anchor = annotations["runbook_url"].split("#")
        assert path == "docs/operate.md" and anchor in headings, f"{rule['alert']}: no heading #{anchor}"


# --- Grafana ----------------------------------------------------------------------------------------


def test_dashboards_are_up_to_date_with_their_generator() -> None:
    result = run(sys.executable, GRAFANA_DIR / "generate_dashboards.py", "--check")
    assert result.returncode == 0, result.stderr


def test_dashboards_have_unique_uids_and_a_model_variable() -> None:
    uids = [d["uid"] for d in dashboards()]
    assert len(DASHBOARD_FILES) == 2 and len(set(uids)) == len(uids)
    for dashboard in dashboards():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert "label_values(hookserve_model_info, model)" in variables["model"]["definition"]


def test_every_panel_has_a_unique_id_unit_description_and_the_dashboard_datasource() -> None:
    for dashboard in dashboards():
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(set(ids)) == len(ids), f"{dashboard['uid']}: duplicate panel ids"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            where = f"{dashboard['uid']} / {panel['title']}"
            assert panel.get("description", "").strip(), f"{where}: no description"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"], f"{where}: no query"
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids), f"{where}: duplicate refIds"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{where}: wider than the grid"


def test_panels_do_not_overlap() -> None:
    for dashboard in dashboards():
        taken: set[tuple[int, int]] = set()
        for panel in panels(dashboard):
            g = panel["gridPos"]
            cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & taken, f"{dashboard['uid']} / {panel['title']} overlaps another panel"
            taken |= cells


def test_dashboards_show_what_operators_need() -> None:
    used = used_metric_names()
    service = {
        "hookserve_requests_total",
        "hookserve_request_duration_seconds_bucket",
        "hookserve_queue_wait_seconds_bucket",
        "hookserve_batch_size_bucket",
        "hookserve_inflight_requests",
        "hookserve_model_forward_seconds_bucket",
    }
    internals = {
        "hookserve_module_forward_seconds_bucket",
        "hookserve_activation_mean",
        "hookserve_activation_std",
        "hookserve_activation_zero_fraction",
        "hookserve_activation_nonfinite_total",
        "hookserve_activation_drift_psi",
        "hookserve_forward_bypass_total",
        "hookserve_monitor_overhead_seconds_total",
        "hookserve_monitored_forward_seconds_total",
    }
    for name in service:
        assert any(w.startswith("hookserve-service") for w in used.get(name, ())), name
    for name in internals:
        assert any(w.startswith("hookserve-internals") for w in used.get(name, ())), name


EXPRESSIONS = dashboard_expressions() + alert_expressions()


@pytest.mark.parametrize("expr", [expr for _, expr in EXPRESSIONS], ids=[where for where, _ in EXPRESSIONS])
def test_expression_parses_as_promql(expr: str) -> None:
    promql_parser.parse(expr)


def test_dashboard_expressions_pass_promtool(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:check_{i}", "expr": expr}
        for i, (_, expr) in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run(promtool(), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_used_by_dashboards_and_alerts_is_declared() -> None:
    known = exposed_names(declared_metrics()) | PROMETHEUS_BUILTINS
    unknown = {name: sorted(where) for name, where in used_metric_names().items() if name not in known}
    assert not unknown, f"not declared in service/monitoring/metrics.py: {unknown}"


def test_metric_name_helpers_find_names_and_histogram_suffixes() -> None:
    expr = 'rate(a_bucket{m="x"}[1m]) / on(m) group_left b + {__name__="c_total"} + sum(rate(d_count[5m]))'
    assert metric_names(expr) == {"a_bucket", "b", "c_total", "d_count"}
    assert exposed_names({"h": "histogram", "c": "counter", "g": "gauge"}) == {
        "h_bucket",
        "h_sum",
        "h_count",
        "c_total",
        "g",
    }
    assert grafana_to_promql('rate(x{m=~"$model"}[$__rate_interval])') == 'rate(x{m=~"x"}[1m])'
