"""The local multi-replica stack (benchmarks/replicas.py) under load: two hookserve replicas behind HAProxy,
one Prometheus scraping both through file_sd.

- Prometheus sees every replica, and its sums over replicas match the requests sent through the balancer;
  the dashboards' and alerts' queries aggregate over replicas (no per-instance series where a per-model
  one is meant).
- A rolling restart (SIGTERM one replica, wait for it to exit, start it, wait until the balancer uses it
  again, next) under load fails no request.
- SIGKILL of one replica under load fails at most the requests it had in flight (each client has at most
  one in flight); HAProxy retries those that got no answer at all, so usually none fail.

Needs ``haproxy`` and ``prometheus`` (``scripts/install_debian.sh haproxy prometheus``).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
import yaml

from benchmarks.replicas import ReplicaStack
from loadtests.payloads import ModelSpec, valid_batch
from tests.test_ops_static import ALERT_RULES, DASHBOARD_FILES, GRAFANA_DURATIONS, panels

pytestmark = pytest.mark.slow

MODEL = "tabular-mlp"
REPLICAS = 2
CLIENTS = 4
# One small model, one API server and a short drain per replica: the stack has 2 cores to share.
CONFIG = {
    "server": {"api_servers": 1, "log_level": "warning", "shutdown_grace_s": 5, "request_timeout_s": 10},
    "models": [{"name": MODEL, "device": "cpu", "torch_threads": 1, "max_batch_size": 32}],
}
PROMETHEUS_WAIT_S = 30.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaStack]:
    with ReplicaStack(CONFIG, REPLICAS, tmp_path_factory.mktemp("replicas"), scrape_interval="1s") as running:
        yield running


@pytest.fixture(scope="module")
def body(stack: ReplicaStack) -> bytes:
    metadata = requests.get(f"{stack.url}/v1/models/{MODEL}", timeout=10).json()
    return json.dumps(valid_batch(ModelSpec.from_metadata(metadata), random.Random(0), 2).body).encode()


@dataclass
class Load:
    """``clients`` threads sending predictions through the balancer, one at a time each, until stopped
    (or ``max_s``). Counts every outcome: an HTTP status, or the exception's class name."""

    url: str
    body: bytes
    clients: int = CLIENTS
    max_s: float = 120.0
    outcomes: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]

    def _client(self) -> None:
        deadline = time.monotonic() + self.max_s
        headers = {"Content-Type": "application/json"}
        with requests.Session() as session:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    response = session.post(self.url, data=self.body, headers=headers, timeout=30)
                    outcome, detail = response.status_code, response.text[:200]
                except requests.RequestException as exc:
                    outcome, detail = type(exc).__name__, str(exc)[:200]
                with self._lock:
                    self.outcomes[outcome] += 1
                    if outcome != 200:
                        self.failures.append(f"{outcome}: {detail}")

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.sent - self.outcomes[200]


def query(stack: ReplicaStack, promql: str, at: float | None = None) -> list[dict]:
    params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
    response = requests.get(f"{stack.prometheus_url}/api/v1/query", params=params, timeout=5)
    response.raise_for_status()
    return response.json()["data"]["result"]


def wait_for_value(stack: ReplicaStack, promql: str, expected: float) -> float:
    """Poll ``promql`` (one series) until it equals ``expected``; return the last value seen."""
    deadline, value = time.monotonic() + PROMETHEUS_WAIT_S, None
    while time.monotonic() < deadline:
        result = query(stack, promql)
        value = float(result[0]["value"][1]) if len(result) == 1 else None
        if value == expected:
            return value
        time.sleep(0.5)
    return value


def balancer_counters(stack: ReplicaStack) -> dict[str, dict[str, int]]:
    """HAProxy's retries (wretr) and redispatches (wredis) per replica, and their sums."""
    stats = stack.server_stats()
    counters = {
        key: {name: int(stats[name][key] or 0) for name in stack.names} for key in ("wretr", "wredis")
    }
    return {"retries": counters["wretr"], "redispatches": counters["wredis"]}


def since(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, int]:
    return {key: sum(after[key].values()) - sum(before[key].values()) for key in after}


def predict_url(stack: ReplicaStack) -> str:
    return f"{stack.url}/v1/models/{MODEL}:predict"


def test_prometheus_sees_every_replica_and_its_sums_match_the_requests_sent(
    stack: ReplicaStack, body: bytes
) -> None:
    assert wait_for_value(stack, 'count(up{job="hookserve"} == 1)', REPLICAS) == REPLICAS
    replicas = {r["metric"]["replica"] for r in query(stack, 'up{job="hookserve"}')}
    assert replicas == set(stack.names)
    succeeded = f'sum(hookserve_requests_total{{model="{MODEL}",code="200"}}) or vector(0)'
    time.sleep(2.5)  # two scrapes: the baseline is every request counted so far (none expected)
    baseline = float(query(stack, succeeded)[0]["value"][1])
    with Load(predict_url(stack), body, max_s=10.0) as load:
        time.sleep(3.0)
    assert load.failed == 0, load.failures[:5]
    # The sum over replicas is exactly what was sent, and each replica served part of it.
    counted = wait_for_value(stack, succeeded, baseline + load.sent)
    total = None if counted is None else counted - baseline
    per_replica = {
        r["metric"]["replica"]: float(r["value"][1])
        for r in query(stack, f'sum by (replica) (hookserve_requests_total{{model="{MODEL}"}})')
    }
    assert total == load.sent, f"Prometheus counted {total}, sent {load.sent}"
    assert set(per_replica) == set(stack.names) and all(v > 0 for v in per_replica.values()), per_replica


def dashboard_queries() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARD_FILES:
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, duration in GRAFANA_DURATIONS.items():
                    expr = expr.replace(variable, duration)
                expr = expr.replace("$model", ".*").replace("$module", ".*")
                found.append((f"{dashboard['uid']} / {panel['title']}", expr))
    return found


def test_dashboard_and_alert_queries_aggregate_over_replicas(stack: ReplicaStack, body: bytes) -> None:
    with Load(predict_url(stack), body, max_s=10.0):
        time.sleep(3.0)
    time.sleep(2.0)  # a scrape after the load
    per_instance = []
    answered = 0
    for where, expr in dashboard_queries():
        result = query(stack, expr)
        answered += bool(result)
        # "Scrape health" plots up per target on purpose; every other panel is per model (or module).
        if where.endswith("Scrape health"):
            assert {r["metric"]["instance"] for r in result} == set(stack.targets())
            continue
        per_instance += [where for r in result if "instance" in r["metric"] or "replica" in r["metric"]]
    assert not per_instance, f"panels with a series per replica: {sorted(set(per_instance))}"
    assert answered >= 15, f"only {answered} dashboard queries returned data"
    # The request rate summed over replicas equals the sum of the per-replica rates.
    # Both at one instant a few seconds back: a scrape that starts before `at` but is stored between
    # the two queries would otherwise reach only the second one.
    at = time.time() - 5.0
    total = query(stack, f'sum by (model) (rate(hookserve_requests_total{{model="{MODEL}"}}[1m]))', at)
    parts = query(stack, f'sum by (replica) (rate(hookserve_requests_total{{model="{MODEL}"}}[1m]))', at)
    assert float(total[0]["value"][1]) == pytest.approx(sum(float(p["value"][1]) for p in parts))
    # Every alert rule evaluates without error against the two replicas' series.
    deadline = time.monotonic() + PROMETHEUS_WAIT_S
    while True:
        groups = requests.get(f"{stack.prometheus_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if all(not r.get("lastEvaluation", "").startswith("0001-") for r in rules):
            break
        assert time.monotonic() < deadline, "alert rules not evaluated"
        time.sleep(0.5)
    assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(ALERT_RULES.read_text())["groups"])
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    assert not [r["name"] for r in rules if r["state"] == "firing"]


def test_rolling_restart_fails_no_request(stack: ReplicaStack, body: bytes, record_property) -> None:
    restarts = []
    before = balancer_counters(stack)
    with Load(predict_url(stack), body) as load:
        time.sleep(1.0)
        for name in stack.names:
            started = time.monotonic()
            sent_before = load.sent
            exit_code = stack.stop_replica(name)
            assert exit_code == 0, f"{name} exited with {exit_code}: {stack.replicas[name].log_tail()}"
            stack.wait_balancer_state(name, "DOWN")
            stack.start_replica(name)
            stack.wait_balancer_state(name, "UP")
            restarts.append((name, round(time.monotonic() - started, 1), load.sent - sent_before))
        time.sleep(1.0)
    summary = {
        "sent": load.sent,
        "outcomes": dict(load.outcomes),
        "restarts (replica, seconds, requests meanwhile)": restarts,
        "haproxy": since(before, balancer_counters(stack)),
    }
    record_property("rolling_restart", summary)
    print(f"rolling restart: {summary}")
    assert load.sent > 0 and all(during > 0 for _, _, during in restarts), summary
    assert load.failed == 0, (summary, load.failures[:5])


def test_sigkill_of_one_replica_fails_at_most_the_requests_in_flight(
    stack: ReplicaStack, body: bytes, record_property
) -> None:
    victim = stack.names[0]
    before = balancer_counters(stack)
    with Load(predict_url(stack), body) as load:
        time.sleep(2.0)
        sent_before = load.sent
        stack.kill_replica(victim)
        stack.wait_balancer_state(victim, "DOWN")
        time.sleep(3.0)  # the survivor carries the load alone
        during = load.sent - sent_before
    summary = {
        "sent": load.sent,
        "outcomes": dict(load.outcomes),
        "requests after the kill": during,
        "haproxy": since(before, balancer_counters(stack)),
    }
    record_property("sigkill", summary)
    print(f"SIGKILL: {summary}")
    stack.start_replica(victim)  # leave the stack whole
    stack.wait_balancer_state(victim, "UP")
    assert during > 0, summary
    # Each client has at most one request in flight: at most CLIENTS were on the killed replica.
    assert load.failed <= CLIENTS, (summary, load.failures[:5])
