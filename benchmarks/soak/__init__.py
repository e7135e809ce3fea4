"""Soak test of hookserve's HTTP API: memory, file descriptors and errors under a long mixed load.

    python -m benchmarks.soak --duration 600 --concurrency 32 --out benchmarks/results/soak
    python -m benchmarks.soak --duration 45 --warmup 15 --sample-every 5      # a quick look

It starts hookserve with ``configs/default.yaml`` (or ``--config``) on a free 127.0.0.1 port through
``benchmarks.servers.start_hookserve``, then runs ``--concurrency`` closed-loop clients for ``--duration``
seconds against every served model, and stops the server at the end (also on error, Ctrl-C or SIGTERM:
the first signal ends the load early and still writes the results).

Requests (``corpus``): valid ones are ``POST /v1/models/{name}:predict`` with held-out rows of each
model's data set (``loadtests.payloads.valid_batch``; random in-range values if none fits), 1 to 8
instances each. A reference pass before the load records each valid body's answer; under load every 200
must carry the same labels (instances whose top-2 probabilities are within ``checks.TIE_MARGIN`` are
exempt: batching may legitimately flip a near tie). About ``--invalid-fraction`` of the requests are
invalid, evenly over the kinds: every client mistake of ``loadtests.payloads.invalid_requests`` (wrong
shape, NaN, out of range, not JSON, too many instances, an unknown field, an unknown model, ...) and the
deep nesting of ``loadtests.payloads.deep_nesting_requests`` (V1 and V2 JSON, 1,100 and 3,000 levels,
closed and unclosed).

Goals (``checks``): every valid request answered 200 with the reference answer; every invalid one
answered 4xx (a 2xx, 5xx, connection error or timeout is an error); total RSS of the server's process
tree grows less than ``--max-rss-growth`` % between the first sample after ``--warmup`` and the end.
Every ``--sample-every`` seconds the tree (server pid + all descendants, psutil) is sampled
(``sampler``): processes, RSS, PSS and USS (one read of ``smaps_rollup`` per process), open fds, CPU
time, requests and errors. Written to ``--out`` (``report``): ``soak_samples.csv``, ``soak_summary.json``
(with per-process detail per sample) and ``server_log_notable.txt`` (server log lines that are not
INFO/access lines).

The load generator (``client``) is one asyncio loop over raw HTTP/1.1 keep-alive connections, so it takes
little of the CPU the server needs: its own CPU time (with the sampler's share shown apart) is part of
the summary.

Exit status: 0 PASS, 1 FAIL (or interrupted during the load), 2 the soak could not run (server did not
start, ...), 130 interrupted before the load.
"""
