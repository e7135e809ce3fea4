"""The tables printed at the end of a run, one per suite, and the goals met or missed."""

from __future__ import annotations

from typing import Any

from benchmarks import report

# (header, record key, decimals) of the served tables
SERVED_COLUMNS = {
    "server": ("server", "server", 0),
    "c": ("c", "concurrency", 0),
    "req/s": ("req/s", "ok_per_s", 0),
    "items/s": ("items/s", "items_per_s", 1),
    "p50": ("p50 ms", "p50_ms", 2),
    "p99": ("p99 ms", "p99_ms", 2),
    "errors": ("errors", "errors", 0),
    "ratio": ("served/limit", "served_over_limit", 3),
    "limit": ("limit items/s", "limit_items_per_s", 1),
    "batch": ("mean batch", "mean_batch", 1),
    "cpu": ("CPU ms/req", "server_cpu_ms_per_req", 2),
    "client": ("client cores", "client_cpu_cores", 2),
    "other": ("other cores", "foreign_cpu_cores", 2),
}


def served_table(rows: list[dict], columns: list[str]) -> str:
    specs = [SERVED_COLUMNS[c] for c in columns]
    return report.text_table(
        [header for header, _, _ in specs],
        [[report.fmt(row.get(key), digits) for _, key, digits in specs] for row in rows],
    )


def print_main(result: dict) -> None:
    print(f"\n## main: {result['model']}, torch threads {result['threads']}\n")
    limits = [
        [f"batch {r['batch_size']}", report.fmt(r["items_per_s"], 0), report.fmt(r["latency_ms_p50"], 3),
         report.fmt(r["latency_ms_p99"], 3)]
        for r in sorted(result["raw"], key=lambda r: r["batch_size"])
    ]  # fmt: skip
    print(report.text_table(["in-process limit", "items/s", "p50 ms", "p99 ms"], limits))
    rows = sorted(result["served"], key=lambda r: (result["servers"].index(r["server"]), r["concurrency"]))
    columns = ["server", "c", "req/s", "p50", "p99", "errors", "ratio", "batch", "cpu", "client", "other"]
    print()
    print(served_table(rows, columns))
    print("served/limit: served items/s over the in-process limit at batch = c")
    for label in result["failed"]:
        print(f"  {label}: did not start (see the log above)")


def print_heavy(result: dict) -> None:
    print(f"\n## heavy: {result['model']} {result['overrides'] or ''}, best batch {result['best_batch']}\n")
    columns = ["server", "c", "items/s", "limit", "ratio", "p50", "p99", "errors", "batch", "cpu", "other"]
    print(served_table(result["served"], columns))


def print_sweep(result: dict) -> None:
    print(f"\n## sweep: {result['model']}, monitoring {result['monitoring']}\n")
    rows = sorted(result["served"], key=lambda r: (r["concurrency"], r["server"]))
    print(served_table(rows, ["server", "c", "req/s", "p50", "p99", "errors", "batch", "cpu", "other"]))


def print_profile(result: dict) -> None:
    print(
        f"\n## profile: {result['model']} at c={result['concurrency']}, monitoring {result['monitoring']}\n"
    )
    window = result.get("cpu_window")
    if window:
        roles = {k[len("cpu_ms_per_req_") :]: v for k, v in window.items() if k.startswith("cpu_ms_per_req_")}
        print(
            f"{window['ok_per_s']:.0f} req/s; "
            f"server CPU per request: {window['server_cpu_ms_per_req']:.3f} ms = "
            + ", ".join(f"{role} {ms:.3f}" for role, ms in sorted(roles.items(), key=lambda kv: -kv[1]))
        )
    if isinstance(result.get("py_spy"), str):
        print(result["py_spy"])
        return
    for mode, title in (("wall", "all threads, waits marked"), ("gil", "GIL holder only: Python CPU")):
        print(f"\npy-spy, {title}:")
        for s in result.get(f"py_spy_{mode}", []):
            top = ", ".join(f"{c['category']} {c['share']:.0%}" for c in s["categories"][:5])
            print(f"- {s['role']}: {s['samples']} samples, active {s['busy_fraction']:.2f} cores; {top}")


def print_goals(results: dict) -> dict:
    goals: dict[str, Any] = {}
    main = results.get("main")
    if main:
        served = {(r["server"], r["concurrency"]): r for r in main["served"]}
        on = "hookserve monitoring on"
        label = on if on in main["servers"] else "hookserve monitoring off"
        hs, peer = served.get((label, 32)), served.get(("fastapi peer", 32))
        if hs and peer:
            goals["c32_vs_peer"] = {
                "server": label,
                "hookserve": hs["ok_per_s"],
                "peer": peer["ok_per_s"],
                "ratio": hs["ok_per_s"] / peer["ok_per_s"],
                "met": hs["ok_per_s"] >= peer["ok_per_s"],
            }
        raw1 = next((r for r in main["raw"] if r["batch_size"] == 1), None)
        c1 = served.get((label, 1))
        if raw1 and c1:
            gap = c1["p50_ms"] - raw1["latency_ms_p50"]
            goals["c1_p50_gap_ms"] = {
                "server": label,
                "p50_ms": c1["p50_ms"],
                "raw_ms": raw1["latency_ms_p50"],
                "gap_ms": gap,
                "met": gap <= 1.5,
            }
    heavy = results.get("heavy")
    if heavy:
        row = next((r for r in heavy["served"] if r["server"] == "hookserve off, threads 1"), None)
        if row:
            goals["heavy_vs_limit"] = {
                "server": row["server"],
                "ratio": row["served_over_limit"],
                "met": row["served_over_limit"] >= 0.85,
            }
    if goals:
        print("\n## goals\n")
        for name, goal in goals.items():
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in goal.items()}
            print(f"- {name}: {shown}")
    return goals
