"""Every Prometheus metric hookserve exports, in one place (the frozen names are listed in docs/contracts.md).

This module only *declares* metrics; what is measured lives in ``hooks.py``/``stats.py`` and the request
path. LitServe runs API servers and inference workers in separate processes, so metrics work in
prometheus-client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set (see
:func:`service.lifecycle.prepare_runtime_dirs`) before this module is imported, and ``/metrics`` renders a
:class:`MultiProcessCollector` over every process's files. Gauges therefore declare a
``multiprocess_mode``.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# Request latency spans sub-millisecond (tiny models, batch 1) to seconds (large models under load).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Per-module latencies are smaller and there are many modules: fewer, finer buckets bound the series count.
MODULE_BUCKETS = (0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "hookserve_requests_total",
    "Prediction requests answered, by HTTP status code.",
    ["model", "version", "code"],
)
PROTOCOL_REQUESTS = Counter(
    "hookserve_protocol_requests_total",
    "Inference requests answered, by protocol (v1: /v1/models/NAME:predict, v2: Open Inference Protocol, "
    "grpc: Open Inference Protocol over gRPC).",
    ["model", "version", "protocol"],
)
REQUEST_DURATION = Histogram(
    "hookserve_request_duration_seconds",
    "Time from a prediction request reaching the API server to its response, in seconds.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "hookserve_queue_wait_seconds",
    "Time a request waited between the API server and the start of its batch, in seconds.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
PREDICTED_WAIT = Histogram(
    "hookserve_predicted_wait_seconds",
    "Queue wait predicted at admission for admitted requests (time already spent plus the learned forward "
    "time of the work ahead), to set beside hookserve_queue_wait_seconds. Only with a latency target or a "
    "request's own timeout.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "hookserve_batch_size",
    "Instances per forward pass (after dynamic batching).",
    ["model", "version"],
    buckets=BATCH_BUCKETS,
)
INFLIGHT = Gauge(
    "hookserve_inflight_requests",
    "Prediction requests admitted and not yet answered (queued or running), read at scrape time.",
    ["model", "version"],
    multiprocess_mode="mostrecent",  # the shared admission count, the same from every API server
)
MODEL_FORWARD = Histogram(
    "hookserve_model_forward_seconds",
    "Wall time of one batched model(x) call, device-synchronized, in seconds.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
REJECTED = Counter(
    "hookserve_rejected_total",
    "Requests refused before reaching a worker, by reason (overload, latency_target, deadline, draining).",
    ["model", "reason"],
)
BATCH_COST = Gauge(
    "hookserve_batch_cost_seconds",
    "Forward time of one batch as the worker's learned cost model predicts it, per batch-size bucket.",
    ["model", "batch_bucket"],
    multiprocess_mode="mostrecent",
)
BATCH_BEST_SIZE = Gauge(
    "hookserve_batch_best_size",
    "The batch size of highest throughput on the learned cost curve: the worker's batches stop there.",
    ["model"],
    multiprocess_mode="mostrecent",
)
WORKER_RESTARTS = Counter(
    "hookserve_worker_restarts_total",
    "Inference workers restarted after they died (SIGKILL, segfault, OOM kill, failed start-up).",
    ["model"],
)
API_SERVER_RESTARTS = Counter(
    "hookserve_api_server_restarts_total",
    "API-server (uvicorn) processes replaced after they died (SIGKILL, segfault, OOM kill).",
)
WORKERS_READY = Gauge(
    "hookserve_workers_ready",
    "Inference workers warmed up and accepting requests (0 while a model's worker is down or restarting).",
    ["model"],
    multiprocess_mode="livesum",
)
MODEL_INFO = Gauge(
    "hookserve_model_info",
    "Constant 1 per served model; labels carry version, device and precision.",
    ["model", "version", "device", "precision"],
    multiprocess_mode="max",
)
PRECISION_AGREEMENT = Gauge(
    "hookserve_precision_top1_agreement",
    "Top-1 agreement of the served precision with fp32 on the calibration batch at start-up (1.0 for fp32).",
    ["model"],
    multiprocess_mode="max",
)

# --- model internals, recorded by forward hooks -------------------------------------------------------
MODULE_FORWARD = Histogram(
    "hookserve_module_forward_seconds",
    "Forward time of one monitored module for one batch, in seconds.",
    ["model", "version", "module"],
    buckets=MODULE_BUCKETS,
)
ACTIVATION_MEAN = Gauge(
    "hookserve_activation_mean",
    "Mean of a module's output (last sampled batch).",
    ["model", "version", "module"],
    multiprocess_mode="mostrecent",
)
ACTIVATION_STD = Gauge(
    "hookserve_activation_std",
    "Standard deviation of a module's output (last sampled batch).",
    ["model", "version", "module"],
    multiprocess_mode="mostrecent",
)
ACTIVATION_MIN = Gauge(
    "hookserve_activation_min",
    "Minimum of a module's output (last sampled batch).",
    ["model", "version", "module"],
    multiprocess_mode="mostrecent",
)
ACTIVATION_MAX = Gauge(
    "hookserve_activation_max",
    "Maximum of a module's output (last sampled batch).",
    ["model", "version", "module"],
    multiprocess_mode="mostrecent",
)
ACTIVATION_ZERO_FRACTION = Gauge(
    "hookserve_activation_zero_fraction",
    "Fraction of exact zeros in a module's output (last sampled batch).",
    ["model", "version", "module"],
    multiprocess_mode="mostrecent",
)
ACTIVATION_NONFINITE = Counter(
    "hookserve_activation_nonfinite_total",
    "NaN or infinite values seen in a module's output.",
    ["model", "version", "module"],
)
ACTIVATION_DRIFT_PSI = Gauge(
    "hookserve_activation_drift_psi",
    "Population stability index of a module's output over the rolling window vs the calibration reference.",
    ["model", "version", "module"],
    multiprocess_mode="mostrecent",
)
FORWARD_BYPASS = Counter(
    "hookserve_forward_bypass_total",
    "Monitored modules whose forward ran without their hooks (called as .forward(), not __call__).",
    ["model"],
)
TRAINING_MODE_RESETS = Counter(
    "hookserve_training_mode_resets_total",
    "Modules found in training mode at serve time and put back in eval.",
    ["model"],
)
OUTPUT_NONFINITE = Counter(
    "hookserve_output_nonfinite_total",
    "Instances whose model output held NaN or Inf (checked on every batch; the request gets a 500).",
    ["model"],
)
NONFINITE_ORIGIN = Counter(
    "hookserve_nonfinite_origin_total",
    "Requests whose output went non-finite, by the first module (execution order) whose output did, found "
    "by replaying the request's offending instances with every module hooked; <root>: the model's own code.",
    ["model", "module"],
)
PRECISION_MIN_AGREEMENT = Gauge(
    "hookserve_precision_min_agreement",
    "The model's min_precision_agreement: the top-1 agreement with fp32 required at start-up, and the "
    "threshold of the live shadow's alert.",
    ["model"],
    multiprocess_mode="max",
)
SHADOW_BATCHES = Counter(
    "hookserve_shadow_batches_total",
    "Live batches of a bf16/fp16 model run again in fp32 (the precision shadow) and compared.",
    ["model"],
)
SHADOW_TOP1_AGREEMENT = Gauge(
    "hookserve_shadow_top1_agreement",
    "Fraction of shadowed live instances whose top-1 class is the same in fp32 as at the served precision, "
    "over the rolling window (the worst live worker); absent until the window holds min_instances; "
    "1 for fp32 models, which have no shadow.",
    ["model"],
    multiprocess_mode="livemin",
)
SHADOW_MAX_ABS_DIFF = Gauge(
    "hookserve_shadow_max_abs_diff",
    "Largest |fp32 - served| of a monitored module's output (module=<output>: the probabilities) over the "
    "shadow's rolling window (the worst live worker).",
    ["model", "module"],
    multiprocess_mode="livemax",
)
MIRROR_REQUESTS = Counter(
    "hookserve_mirror_requests_total",
    "Requests answered by the serving version that also ran on the mirrored candidate version (the label).",
    ["model", "version"],
)
MIRROR_PASSED_OVER = Counter(
    "hookserve_mirror_passed_over_total",
    "Answered requests the mirror's fraction picked but it could not keep, because its kept batch was full: "
    "it fell behind the traffic or waits for its budget (raise mirror.budget to mirror more).",
    ["model", "version"],
)
MIRROR_FAILURES = Counter(
    "hookserve_mirror_failures_total",
    "Mirror runs that raised (logged; the requests' answers were already sent and are not affected).",
    ["model", "version"],
)
MIRROR_TOP1_AGREEMENT = Gauge(
    "hookserve_mirror_top1_agreement",
    "Fraction of mirrored instances whose top-1 class is the same on the candidate version as on the serving "
    "one, over the rolling window (the worst live worker); absent until the window holds min_instances.",
    ["model", "version"],
    multiprocess_mode="livemin",
)
MIRROR_MAX_ABS_DIFF = Gauge(
    "hookserve_mirror_max_abs_diff",
    "Largest |candidate - serving| of a monitored module's output that both versions have (module=<output>: "
    "the probabilities) over the mirror's rolling window (the worst live worker).",
    ["model", "version", "module"],
    multiprocess_mode="livemax",
)
MIRROR_ACTIVATION_PSI = Gauge(
    "hookserve_mirror_activation_psi",
    "Population stability index of the candidate version's activations of a shared monitored module against "
    "the serving version's on the same mirrored inputs, over the rolling window (the worst live worker).",
    ["model", "version", "module"],
    multiprocess_mode="livemax",
)
MONITOR_OVERHEAD = Counter(
    "hookserve_monitor_overhead_seconds_total",
    "Time spent inside monitoring hooks and their publication, in seconds.",
    ["model"],
)
MONITORED_FORWARD = Counter(
    "hookserve_monitored_forward_seconds_total",
    "Forward time of batches run with monitoring attached, in seconds (denominator for overhead ratios).",
    ["model"],
)
MONITOR_SAMPLE_INTERVAL = Gauge(
    "hookserve_monitor_sample_interval_batches",
    "How often the monitor samples, in batches: kind=armed for per-module latency and non-finite checks, "
    "kind=stats for activation stats and drift (adapted to the overhead budget unless fixed in config).",
    ["model", "kind"],
    multiprocess_mode="mostrecent",
)
MODEL_LOAD_FAILURES = Counter(
    "hookserve_model_load_failures_total",
    "Model loads (start-up excluded) that failed and left the serving versions serving.",
    ["model"],
)
TRACE_SPANS_DROPPED = Counter(
    "hookserve_trace_spans_dropped_total",
    "Trace spans lost: the export buffer was full, or the collector did not take them.",
)


def render_latest() -> bytes:
    """The Prometheus text exposition of every process's metrics (or this process's, outside multiprocess)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
