"""Write hookserve's Grafana dashboards (JSON) from one description, so every panel gets a unit, a
description and the same datasource and variables.

    python configs/grafana/generate_dashboards.py          # rewrite configs/grafana/dashboards/*.json
    python configs/grafana/generate_dashboards.py --check  # exit 1 if the JSON files are out of date

Grafana provisions the JSON files (configs/grafana/provisioning/dashboards/hookserve.yml); edit this file,
not the JSON, and rerun it. Metric names are the contract in service/monitoring/metrics.py;
tests/test_ops_static.py checks every expression parses and uses only those names.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODEL = 'model=~"$model"'
MODEL_MODULE = 'model=~"$model", module=~"$module"'
GRID_WIDTH = 24
RATE = "[$__rate_interval]"


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    heatmap: bool = False

    def to_json(self, ref_id: str) -> dict:
        target = {
            "datasource": DATASOURCE,
            "refId": ref_id,
            "expr": self.expr,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "instant": self.instant,
        }
        if self.table:
            target["format"] = "table"
        elif self.heatmap:
            target["format"] = "heatmap"
        return target


@dataclass
class Panel:
    title: str
    description: str
    unit: str
    targets: list[Target]
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    thresholds: list[tuple[float, str]] = field(default_factory=list)
    min_value: float | None = None
    max_value: float | None = None


@dataclass
class Row:
    title: str


def _field_config(panel: Panel) -> dict:
    steps = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in panel.thresholds]
    defaults: dict = {
        "unit": panel.unit,
        "color": {"mode": "thresholds" if panel.kind in ("stat", "bargauge") else "palette-classic"},
        "thresholds": {"mode": "absolute", "steps": steps},
    }
    if panel.min_value is not None:
        defaults["min"] = panel.min_value
    if panel.max_value is not None:
        defaults["max"] = panel.max_value
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"},
        }
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> dict:
    if panel.kind == "timeseries":
        return {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if panel.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
        }
    if panel.kind == "bargauge":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
        }
    if panel.kind == "heatmap":
        return {
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": panel.unit},
            "cellValues": {"unit": "short"},
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "tooltip": {"mode": "single", "yHistogram": True},
            "rowsFrame": {"layout": "le"},
        }
    if panel.kind == "table":
        return {"showHeader": True, "cellHeight": "sm"}
    raise ValueError(f"unknown panel kind {panel.kind}")


def _layout(items: list[Panel | Row]) -> list[dict]:
    """Place panels left to right, wrapping at the grid width; rows start a new line."""
    panels, x, y, line_height, next_id = [], 0, 0, 0, 1
    for item in items:
        if isinstance(item, Row):
            y += line_height
            panels.append(
                {
                    "id": next_id,
                    "type": "row",
                    "title": item.title,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                    "panels": [],
                }
            )
            x, y, line_height, next_id = 0, y + 1, 0, next_id + 1
            continue
        if x + item.width > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        panel = {
            "id": next_id,
            "type": item.kind,
            "title": item.title,
            "description": item.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": item.height, "w": item.width, "x": x, "y": y},
            "fieldConfig": _field_config(item),
            "options": _options(item),
            "targets": [t.to_json(chr(ord("A") + i)) for i, t in enumerate(item.targets)],
        }
        if item.kind == "table":
            panel["transformations"] = [
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ]
        panels.append(panel)
        x, line_height, next_id = x + item.width, max(line_height, item.height), next_id + 1
    return panels


def _query_variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def _dashboard(uid: str, title: str, description: str, variables: list[dict], items: list) -> dict:
    datasource_variable = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["hookserve"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [
            {
                "title": "hookserve dashboards",
                "type": "dashboards",
                "tags": ["hookserve"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": [datasource_variable, *variables]},
        "panels": _layout(items),
    }


def _quantiles(metric: str, by: str = "model") -> list[Target]:
    return [
        Target(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{MODEL}}}{RATE})))",
            f"{{{{{by}}}}} p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def service_health() -> dict:
    items: list[Panel | Row] = [
        Row("Traffic"),
        Panel(
            "Request rate by status code",
            "Prediction requests answered per second, split by model and HTTP status code "
            "(hookserve_requests_total). 4xx: client errors, 503: overload, 504: deadline, 500: fault.",
            "reqps",
            [
                Target(
                    f"sum by (model, code) (rate(hookserve_requests_total{{{MODEL}}}{RATE}))",
                    "{{model}} {{code}}",
                )
            ],
        ),
        Panel(
            "5xx error ratio",
            "Share of prediction requests answered with a 5xx code. The HookserveHighErrorRate alert fires "
            "above 5% for 5 minutes.",
            "percentunit",
            [
                Target(
                    f'sum by (model) (rate(hookserve_requests_total{{{MODEL}, code=~"5.."}}{RATE}))'
                    f" / sum by (model) (rate(hookserve_requests_total{{{MODEL}}}{RATE}))",
                    "{{model}}",
                )
            ],
            thresholds=[(0.05, "red")],
            min_value=0,
        ),
        Panel(
            "In-flight requests",
            "Prediction requests admitted and not yet answered (queued or running), summed over processes "
            "and replicas (hookserve_inflight_requests).",
            "short",
            [Target(f"sum by (model) (hookserve_inflight_requests{{{MODEL}}})", "{{model}}")],
            width=8,
        ),
        Panel(
            "Rejected requests",
            "Requests refused before reaching a worker (503 + Retry-After), by reason: overload (admission "
            "limit reached), latency_target (predicted answer time over the model's latency_target_ms), "
            "deadline (predicted to miss the request's own timeout) or draining (shutting down).",
            "reqps",
            [
                Target(
                    f"sum by (model, reason) (rate(hookserve_rejected_total{{{MODEL}}}{RATE}))",
                    "{{model}} {{reason}}",
                )
            ],
            width=8,
        ),
        Panel(
            "Learned batch cost",
            "Forward time of one batch per batch-size bucket, as each worker's online cost model predicts it "
            "(hookserve_batch_cost_seconds). Admission with latency_target_ms predicts from it; a curve that "
            "rises after a deploy sheds at lower load.",
            "s",
            [
                Target(
                    f"max by (model, batch_bucket) (hookserve_batch_cost_seconds{{{MODEL}}})",
                    "{{model}} b={{batch_bucket}}",
                )
            ],
            width=8,
        ),
        Panel(
            "Queue wait: predicted at admission against actual",
            "The p50 and p99 of the queue wait admission predicted for the requests it let in "
            "(hookserve_predicted_wait_seconds: time already spent plus the learned forward time of the work "
            "ahead) beside the queue wait the workers measured (hookserve_queue_wait_seconds). Actual well "
            "above predicted means the cost model or the queue count misses something, and the latency "
            "target is not being kept. Only models with a latency target (or own request timeouts).",
            "s",
            [
                Target(
                    f"histogram_quantile({q}, sum by (model, le) (rate({metric}_bucket{{{MODEL}}}{RATE})))",
                    f"{{{{model}}}} p{round(q * 100)} {label}",
                )
                for q in (0.5, 0.99)
                for metric, label in (
                    ("hookserve_predicted_wait_seconds", "predicted"),
                    ("hookserve_queue_wait_seconds", "actual"),
                )
            ],
            width=8,
        ),
        Panel(
            "Batch size: served against the curve's best",
            "The p50 and p99 of the batches the workers ran (hookserve_batch_size) beside the batch size of "
            "highest throughput on the learned cost curve (hookserve_batch_best_size), where batches stop. "
            "Served batches well below the best mean there is not enough load to fill them.",
            "short",
            [
                Target(
                    "histogram_quantile(0.5, sum by (model, le) "
                    f"(rate(hookserve_batch_size_bucket{{{MODEL}}}{RATE})))",
                    "{{model}} p50 served",
                ),
                Target(
                    "histogram_quantile(0.99, sum by (model, le) "
                    f"(rate(hookserve_batch_size_bucket{{{MODEL}}}{RATE})))",
                    "{{model}} p99 served",
                ),
                Target(f"max by (model) (hookserve_batch_best_size{{{MODEL}}})", "{{model}} best"),
            ],
            width=8,
        ),
        Panel(
            "Scrape health",
            "1 when Prometheus can scrape the replica's /metrics, 0 when it cannot (HookserveTargetDown "
            "fires after 1 minute at 0).",
            "none",
            [Target('up{job="hookserve"}', "{{instance}}")],
            kind="stat",
            width=8,
            thresholds=[(0, "red"), (1, "green")],
        ),
        Panel(
            "Ready workers",
            "Inference workers warmed up and accepting requests, per model and replica "
            "(hookserve_workers_ready). 0 means the model answers 503 there: its worker died and is "
            "restarting, or crash-looped and stays down (HookserveModelDown).",
            "short",
            [Target(f"min by (model) (hookserve_workers_ready{{{MODEL}}})", "{{model}}")],
            kind="stat",
            width=8,
            thresholds=[(0, "red"), (1, "green")],
        ),
        Panel(
            "Worker restarts",
            "Inference workers restarted after they died (SIGKILL, segfault, OOM kill, failed start-up), "
            "per model, over the last hour (hookserve_worker_restarts_total).",
            "short",
            [
                Target(
                    f"sum by (model) (increase(hookserve_worker_restarts_total{{{MODEL}}}[1h]))", "{{model}}"
                )
            ],
            width=8,
            min_value=0,
        ),
        Panel(
            "API-server restarts",
            "API-server (uvicorn) processes replaced after they died, over all replicas in the last hour "
            "(hookserve_api_server_restarts_total; the alert names the replica). Only the requests in "
            "flight on the dead one failed; a crash loop stops the replica (HookserveApiServerRestarted).",
            "short",
            [Target("sum(increase(hookserve_api_server_restarts_total[1h]))", "all replicas")],
            width=8,
            min_value=0,
        ),
        Row("Latency"),
        Panel(
            "Request latency p50 / p95 / p99",
            "End-to-end prediction latency measured in the API server, from request to response "
            "(hookserve_request_duration_seconds). SLO: p99 < 500 ms (alert HookserveLatencyP99High).",
            "s",
            _quantiles("hookserve_request_duration_seconds"),
            thresholds=[(0.5, "red")],
        ),
        Panel(
            "Queue wait p50 / p95 / p99",
            "Time a request waited between the API server and the start of its batch "
            "(hookserve_queue_wait_seconds). Growing queue wait with flat forward time means the replica "
            "is saturated.",
            "s",
            _quantiles("hookserve_queue_wait_seconds"),
        ),
        Panel(
            "Model forward time p50 / p95 / p99",
            "Wall time of one batched model(x) call, device-synchronised (hookserve_model_forward_seconds). "
            "Includes monitoring hooks.",
            "s",
            _quantiles("hookserve_model_forward_seconds"),
        ),
        Panel(
            "Where request time goes (mean)",
            "Mean request latency next to its parts: queue wait and model forward time. The remainder is "
            "serialisation and inter-process messaging.",
            "s",
            [
                Target(
                    f"sum by (model) (rate({m}_sum{{{MODEL}}}{RATE}))"
                    f" / sum by (model) (rate({m}_count{{{MODEL}}}{RATE}))",
                    f"{{{{model}}}} {label}",
                )
                for m, label in (
                    ("hookserve_request_duration_seconds", "request"),
                    ("hookserve_queue_wait_seconds", "queue wait"),
                    ("hookserve_model_forward_seconds", "forward"),
                )
            ],
        ),
        Row("Batching"),
        Panel(
            "Batch size distribution",
            "How many instances each forward pass carried after dynamic batching (hookserve_batch_size), "
            "per bucket over time. Mass at 1 under load means the batch window is too short or traffic too "
            "thin to batch.",
            "short",
            [
                Target(
                    f"sum by (le) (increase(hookserve_batch_size_bucket{{{MODEL}}}{RATE}))",
                    "{{le}}",
                    heatmap=True,
                )
            ],
            kind="heatmap",
        ),
        Panel(
            "Mean batch size and forward passes per second",
            "Mean instances per forward pass, and forward passes per second (hookserve_batch_size).",
            "short",
            [
                Target(
                    f"sum by (model) (rate(hookserve_batch_size_sum{{{MODEL}}}{RATE}))"
                    f" / sum by (model) (rate(hookserve_batch_size_count{{{MODEL}}}{RATE}))",
                    "{{model}} mean batch",
                ),
                Target(
                    f"sum by (model) (rate(hookserve_batch_size_count{{{MODEL}}}{RATE}))",
                    "{{model}} batches/s",
                ),
            ],
        ),
        Row("Deployment"),
        Panel(
            "Served models",
            "One row per served model and replica: version, device and precision (hookserve_model_info).",
            "none",
            [
                Target(
                    f"max by (model, version, device, precision) (hookserve_model_info{{{MODEL}}})",
                    instant=True,
                    table=True,
                )
            ],
            kind="table",
            width=16,
        ),
        Panel(
            "Precision top-1 agreement",
            "Top-1 agreement of the served precision with fp32 on the calibration batch at start-up "
            "(hookserve_precision_top1_agreement); 1.0 for fp32.",
            "percentunit",
            [Target(f"min by (model) (hookserve_precision_top1_agreement{{{MODEL}}})", "{{model}}")],
            kind="stat",
            width=8,
            thresholds=[(0, "red"), (0.99, "green")],
        ),
    ]
    return _dashboard(
        "hookserve-service",
        "hookserve / Service health",
        "Traffic, errors, latency, queueing and batching of the hookserve prediction API.",
        [_query_variable("model", "Model", "label_values(hookserve_model_info, model)")],
        items,
    )


def _per_module(metric: str, agg: str = "avg") -> list[Target]:
    return [Target(f"{agg} by (model, module) ({metric}{{{MODEL_MODULE}}})", "{{model}} {{module}}")]


def model_internals() -> dict:
    module_time = "hookserve_module_forward_seconds"
    items: list[Panel | Row] = [
        Row("Per-module latency"),
        Panel(
            "Slowest modules (mean forward time, top 10)",
            "The 10 monitored modules with the highest mean forward time per batch over the last 5 minutes "
            "(hookserve_module_forward_seconds).",
            "s",
            [
                Target(
                    f"topk(10, sum by (model, module) (rate({module_time}_sum{{{MODEL_MODULE}}}[5m]))"
                    f" / sum by (model, module) (rate({module_time}_count{{{MODEL_MODULE}}}[5m])))",
                    "{{model}} {{module}}",
                    instant=True,
                )
            ],
            kind="bargauge",
        ),
        Panel(
            "Module forward time p95 (top 10)",
            "95th percentile of each monitored module's forward time per batch, for the 10 slowest at each "
            "moment (hookserve_module_forward_seconds).",
            "s",
            [
                Target(
                    f"topk(10, histogram_quantile(0.95, sum by (model, module, le) "
                    f"(rate({module_time}_bucket{{{MODEL_MODULE}}}{RATE}))))",
                    "{{model}} {{module}}",
                )
            ],
        ),
        Panel(
            "Share of forward time by module",
            "Each module's share of the summed monitored module time of its model. Nested modules both "
            "count, so shares can add up to more than 100%.",
            "percentunit",
            [
                Target(
                    f"sum by (model, module) (rate({module_time}_sum{{{MODEL_MODULE}}}{RATE}))"
                    f" / ignoring (module) group_left sum by (model) "
                    f"(rate({module_time}_sum{{{MODEL}}}{RATE}))",
                    "{{model}} {{module}}",
                )
            ],
            width=24,
        ),
        Row("Activations"),
        Panel(
            "Activation mean",
            "Mean of each monitored module's output on the last sampled batch (hookserve_activation_mean).",
            "none",
            _per_module("hookserve_activation_mean"),
        ),
        Panel(
            "Activation standard deviation",
            "Standard deviation of each monitored module's output on the last sampled batch "
            "(hookserve_activation_std). A collapse towards 0 means dead or saturated units.",
            "none",
            _per_module("hookserve_activation_std"),
        ),
        Panel(
            "Activation zero fraction",
            "Fraction of exact zeros in each module's output (hookserve_activation_zero_fraction). After a "
            "ReLU, a fraction creeping towards 100% means dying units.",
            "percentunit",
            _per_module("hookserve_activation_zero_fraction"),
            min_value=0,
            max_value=1,
        ),
        Panel(
            "Activation range (min / max)",
            "Smallest and largest value of each module's output on the last sampled batch "
            "(hookserve_activation_min / _max). Values near the dtype's limit warn of overflow.",
            "none",
            [
                Target(
                    f"min by (model, module) (hookserve_activation_min{{{MODEL_MODULE}}})",
                    "{{model}} {{module}} min",
                ),
                Target(
                    f"max by (model, module) (hookserve_activation_max{{{MODEL_MODULE}}})",
                    "{{model}} {{module}} max",
                ),
            ],
        ),
        Row("Health of the model"),
        Panel(
            "Non-finite activations",
            "NaN or Inf values seen in module outputs per interval (hookserve_activation_nonfinite_total). "
            "Any value above 0 fires HookserveNonFiniteActivations.",
            "short",
            [
                Target(
                    f"sum by (model, module) (increase(hookserve_activation_nonfinite_total{{{MODEL_MODULE}}}"
                    f"{RATE}))",
                    "{{model}} {{module}}",
                )
            ],
            thresholds=[(1, "red")],
        ),
        Panel(
            "Non-finite origins (every request)",
            "Requests whose output went NaN/Inf per interval, by the first module (in execution order) "
            "whose output did, found by replaying the request's offending instances with every module "
            "hooked (hookserve_nonfinite_origin_total; <root>: the model's own code). Every such request "
            "got a 500; the worker log names its request id next to the module.",
            "short",
            [
                Target(
                    f"sum by (model, module) (increase(hookserve_nonfinite_origin_total{{{MODEL}}}{RATE}))",
                    "{{model}} {{module}}",
                )
            ],
            thresholds=[(1, "red")],
        ),
        Panel(
            "Drift (PSI) per module",
            "Population stability index of each module's output over the rolling window against the "
            "calibration reference (hookserve_activation_drift_psi). Below 0.1: stable; 0.1-0.25: moderate; "
            "above 0.25 for 15 minutes fires HookserveActivationDrift.",
            "none",
            _per_module("hookserve_activation_drift_psi", agg="max"),
            thresholds=[(0.1, "orange"), (0.25, "red")],
            min_value=0,
            width=24,
        ),
        Panel(
            "Forward bypasses in range",
            "Monitored modules that ran without their hooks (called via .forward()) over the dashboard's "
            "time range (hookserve_forward_bypass_total). Anything above 0 means blind spots in this "
            "dashboard and fires HookserveForwardBypass.",
            "short",
            [
                Target(
                    f"sum by (model) (increase(hookserve_forward_bypass_total{{{MODEL}}}[$__range]))",
                    "{{model}}",
                    instant=True,
                )
            ],
            kind="stat",
            width=8,
            thresholds=[(1, "red")],
        ),
        Panel(
            "Training-mode resets in range",
            "Modules found in training mode at serve time and put back in eval over the dashboard's time "
            "range (hookserve_training_mode_resets_total). Non-zero: model code calls .train().",
            "short",
            [
                Target(
                    f"sum by (model) (increase(hookserve_training_mode_resets_total{{{MODEL}}}[$__range]))",
                    "{{model}}",
                    instant=True,
                )
            ],
            kind="stat",
            width=8,
            thresholds=[(1, "orange")],
        ),
        Panel(
            "Monitoring overhead (now)",
            "Time spent in monitoring hooks as a share of monitored forward time over the last 10 minutes "
            "(hookserve_monitor_overhead_seconds_total / hookserve_monitored_forward_seconds_total). "
            "Budget: 3% (HookserveMonitorOverheadHigh).",
            "percentunit",
            [
                Target(
                    f"sum by (model) (rate(hookserve_monitor_overhead_seconds_total{{{MODEL}}}[10m]))"
                    f" / sum by (model) (rate(hookserve_monitored_forward_seconds_total{{{MODEL}}}[10m]))",
                    "{{model}}",
                    instant=True,
                )
            ],
            kind="stat",
            width=8,
            thresholds=[(0.03, "orange"), (0.045, "red")],
        ),
        Panel(
            "Monitoring overhead ratio",
            "Time spent in monitoring hooks divided by the forward time of monitored batches "
            "(rate of hookserve_monitor_overhead_seconds_total / rate of "
            "hookserve_monitored_forward_seconds_total). The sampler holds it near the 3% budget; "
            "the red line is the alert threshold (4.5%).",
            "percentunit",
            [
                Target(
                    f"sum by (model) (rate(hookserve_monitor_overhead_seconds_total{{{MODEL}}}{RATE}))"
                    f" / sum by (model) (rate(hookserve_monitored_forward_seconds_total{{{MODEL}}}"
                    f"{RATE}))",
                    "{{model}}",
                )
            ],
            thresholds=[(0.045, "red")],
            min_value=0,
        ),
        Panel(
            "Monitor sampling interval",
            "Every how many batches the monitor samples (hookserve_monitor_sample_interval_batches): "
            "kind=armed for per-module latency and non-finite checks, kind=stats for activation statistics "
            "and drift. Unless fixed in config, it widens to keep overhead within budget; a wide interval "
            "makes the panels above react later.",
            "short",
            [
                Target(
                    f"max by (model, kind) (hookserve_monitor_sample_interval_batches{{{MODEL}}})",
                    "{{model}} {{kind}}",
                )
            ],
            min_value=1,
        ),
        Row("Precision shadow (bf16/fp16 models)"),
        Panel(
            "Shadow top-1 agreement with fp32",
            "Share of shadowed live instances whose top-1 class is the same when the batch is re-run in "
            "fp32 (autocast off) as at the served precision, over the shadow's rolling window, worst live "
            "worker (hookserve_shadow_top1_agreement; 1 for fp32 models). The 'threshold' series: the "
            "model's start-up threshold min_precision_agreement; below it for 15 minutes fires "
            "HookservePrecisionShadowDisagreement.",
            "percentunit",
            [
                Target(f"min by (model) (hookserve_shadow_top1_agreement{{{MODEL}}})", "{{model}}"),
                Target(
                    f"max by (model) (hookserve_precision_min_agreement{{{MODEL}}})", "{{model}} threshold"
                ),
            ],
            width=8,
            max_value=1,
        ),
        Panel(
            "Shadow max |fp32 - served| per module",
            "Largest absolute difference between the fp32 re-run and the served run of each monitored "
            "module's output over the shadow's rolling window (hookserve_shadow_max_abs_diff; "
            "module=<output>: the probabilities). The first module with a jump is where precision is lost.",
            "none",
            [
                Target(
                    'max by (model, module) (hookserve_shadow_max_abs_diff{model=~"$model", '
                    'module=~"$module|<output>"})',
                    "{{model}} {{module}}",
                )
            ],
            width=8,
            min_value=0,
        ),
        Panel(
            "Shadowed batches",
            "Live batches re-run in fp32 per interval (hookserve_shadow_batches_total). The shadow spends "
            "at most monitoring.shadow.budget_share of the overhead budget, so a slow model is shadowed "
            "less often; its cost is part of the monitoring overhead ratio.",
            "short",
            [
                Target(
                    f"sum by (model) (increase(hookserve_shadow_batches_total{{{MODEL}}}{RATE}))",
                    "{{model}}",
                )
            ],
            width=8,
            min_value=0,
        ),
        Row("Mirror (a candidate version on live requests)"),
        Panel(
            "Mirror top-1 agreement",
            "Share of mirrored instances whose top-1 class is the same on the candidate version (the "
            "version label) as on the serving one, over the mirror's rolling window, worst live worker of "
            "any replica (hookserve_mirror_top1_agreement). Below 0.95 for 15 minutes fires "
            "HookserveMirrorDisagreement.",
            "percentunit",
            [
                Target(
                    f"min by (model, version) (hookserve_mirror_top1_agreement{{{MODEL}}})",
                    "{{model}} v{{version}}",
                )
            ],
            width=6,
            max_value=1,
            thresholds=[(0, "red"), (0.95, "green")],
        ),
        Panel(
            "Mirror max |candidate - serving| per module",
            "Largest absolute difference between the candidate's and the serving version's output of each "
            "monitored module both have, on the same mirrored inputs, over the rolling window "
            "(hookserve_mirror_max_abs_diff; module=<output>: the probabilities). 0 up to the first "
            "module whose weights changed; the first non-zero module is where the versions part.",
            "none",
            [
                Target(
                    'max by (model, version, module) (hookserve_mirror_max_abs_diff{model=~"$model", '
                    'module=~"$module|<output>"})',
                    "{{model}} v{{version}} {{module}}",
                )
            ],
            width=6,
            min_value=0,
        ),
        Panel(
            "Mirror activation PSI per module",
            "Population stability index of the candidate's activations of each shared module against the "
            "serving version's on the same inputs (hookserve_mirror_activation_psi): < 0.1 the same "
            "distribution, 0.1-0.25 a moderate shift, > 0.25 a different one.",
            "none",
            [
                Target(
                    f"max by (model, version, module) (hookserve_mirror_activation_psi{{{MODEL_MODULE}}})",
                    "{{model}} v{{version}} {{module}}",
                )
            ],
            width=6,
            min_value=0,
            thresholds=[(0.1, "yellow"), (0.25, "red")],
        ),
        Panel(
            "Mirrored requests",
            "Requests answered by the serving version that also ran on the candidate, per second, summed "
            "over replicas (hookserve_mirror_requests_total), failed mirror runs "
            "(hookserve_mirror_failures_total), and requests picked by mirror.fraction that the mirror "
            "passed over because it was full, behind its traffic or over mirror.budget "
            "(hookserve_mirror_passed_over_total: raise the budget to mirror them). Its time is part of "
            "the monitoring overhead.",
            "reqps",
            [
                Target(
                    f"sum by (model, version) (rate(hookserve_mirror_requests_total{{{MODEL}}}{RATE}))",
                    "{{model}} v{{version}}",
                ),
                Target(
                    f"sum by (model, version) (rate(hookserve_mirror_failures_total{{{MODEL}}}{RATE}))",
                    "{{model}} v{{version}} failed runs",
                ),
                Target(
                    f"sum by (model, version) (rate(hookserve_mirror_passed_over_total{{{MODEL}}}{RATE}))",
                    "{{model}} v{{version}} passed over",
                ),
            ],
            width=6,
            min_value=0,
        ),
    ]
    return _dashboard(
        "hookserve-internals",
        "hookserve / Model internals",
        "What forward hooks see inside the served models: per-module latency, activation statistics, "
        "non-finite values and their origin, drift, bypassed hooks, the fp32 precision shadow, a mirrored "
        "candidate version and the cost of monitoring itself.",
        [
            _query_variable("model", "Model", "label_values(hookserve_model_info, model)"),
            _query_variable(
                "module",
                "Module",
                'label_values(hookserve_module_forward_seconds_count{model=~"$model"}, module)',
            ),
        ],
        items,
    )


DASHBOARDS = {
    "hookserve-service.json": service_health,
    "hookserve-internals.json": model_internals,
}


def render(build) -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="fail if a dashboard file differs from its source"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = DASHBOARD_DIR / name, render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date, rerun {Path(__file__).name}: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
