"""hookserve's serving benchmark: served throughput and latency against the in-process limit and a peer.

One command measures, side by side and interleaved round by round (servers run concurrently; windows
rotate between them, so drift in the machine's load hits every server alike):

* ``main``    -- (a) the limit: ``model(x)`` in this process at batch 1, 8, 32, 64; (b) hookserve with
  monitoring on and (c) off, and (d) a plain single-process FastAPI peer with the same JSON contract, at
  1, 8, 32 and 64 concurrent clients (one instance per request);
* ``heavy``   -- a compute-bound model (resnet-bench) at its best batch size: served items/s vs the limit,
  for worker torch threads 1 and 2;
* ``sweep``   -- configurations the service could adopt as defaults (API servers, batch window, torch
  threads, max batch size), each a running hookserve, all interleaved with the peer;
* ``profile`` -- CPU per request by process role, and py-spy samples of every hookserve process under load.

Load comes from wrk (one C thread; a Python client would take CPU the servers need on a small machine),
or from ``benchmarks.loadgen``'s asyncio client when wrk is not installed. Every window records the
CPU the servers, the client and everything else on the machine used, so a noisy window shows as such.

    python -m benchmarks.serving_bench --model digits-cnn --device cpu            # main + heavy
    python -m benchmarks.serving_bench --quick                                    # same, < 5 min
    python -m benchmarks.serving_bench --suite sweep --suite profile              # defaults to adopt

Modules: ``bench`` (the plan and the run's state), ``measure`` (servers side by side, interleaved
windows), ``limits`` (the in-process limit), ``suite_main``, ``suite_heavy``, ``suite_sweep`` and
``suite_profile`` (one suite each), ``provenance`` (machine, versions, code fingerprint), ``printing``
(tables and goals) and ``cli`` (options, outputs).
"""

from benchmarks.serving_bench.cli import main

__all__ = ["main"]
