"""Turn benchmark records into medians, text tables, CSV files and a PNG."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SUMMARY_FIELDS = (
    "ok_per_s",
    "items_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "errors",
    "server_cpu_ms_per_req",
    "client_cpu_cores",
    "foreign_cpu_cores",
    "mean_batch",
    "forward_ms_mean",
    "queue_wait_ms_mean",
)


def median_by(records: Iterable[dict[str, Any]], keys: Sequence[str], fields: Sequence[str]) -> list[dict]:
    """Group ``records`` by ``keys``; each group becomes one row holding the median of every field."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[tuple(record[k] for k in keys)].append(record)
    rows = []
    for key, group in groups.items():
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row["repeats"] = len(group)
        for name in fields:
            values = [r[name] for r in group if r.get(name) is not None]
            row[name] = statistics.median(values) if values else None
        for name in group[0]:
            if name.startswith("cpu_ms_per_req_"):
                row[name] = statistics.median(r.get(name, 0.0) for r in group)
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def _cell(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table whose lines are also valid Markdown table rows."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def plot_serving(
    path: Path,
    title: str,
    served: list[dict[str, Any]],
    limit_by_batch: dict[int, float],
    labels: Sequence[str],
) -> None:
    """Throughput and p99 against concurrency, one line per server, the in-process limit dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in labels:
        rows = sorted((r for r in served if r["server"] == label), key=lambda r: r["concurrency"])
        if not rows:
            continue
        xs = [r["concurrency"] for r in rows]
        ax_rate.plot(xs, [r["items_per_s"] for r in rows], marker="o", label=label)
        ax_p99.plot(xs, [r["p99_ms"] for r in rows], marker="o", label=label)
    if limit_by_batch:
        batches = sorted(limit_by_batch)
        ax_rate.plot(
            batches,
            [limit_by_batch[b] for b in batches],
            "k--",
            alpha=0.5,
            label="in-process limit (batch = c)",
        )
    for ax in (ax_rate, ax_p99):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (1 instance per request)")
        ax.grid(True, which="both", alpha=0.3)
    ax_rate.set_yscale("log")
    ax_rate.set_ylabel("items/s (median of rounds)")
    ax_p99.set_ylabel("p99 latency, ms")
    ax_rate.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
