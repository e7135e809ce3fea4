"""What happens to a decoded gRPC request before its answer: drain, admission, a worker, the deadline.

The same steps, in the same order and with the same counters, as ``InferenceRoute._answer`` and
``_run`` take for V1 and V2 REST (service/http/inference.py), so a gRPC request shares the model's
admission gate, drain switch and worker links, and batches with REST requests. This is the one place
that knows how: when the HTTP edge offers a protocol-neutral ``InferencePipeline``, :func:`pipeline_for`
returns that instead (same ``infer`` signature) and this class goes.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from service.http.admission import AdmissionGate, DrainSwitch
from service.http.inference import Decoded, RouteSettings
from service.http.worker_client import ModelWorkers, WorkerUnavailable
from service.messages import InferRequest
from service.monitoring.metrics import REJECTED

# Request uids must be unique per worker link; a link is shared with REST, whose uids count from 0 in
# inference.py, so gRPC's count from the far end of the range (pickled ints: no width limit).
_uids = itertools.count(1 << 62)


class WorkerPipeline:
    """One model's path from a decoded request to the worker's ``(status, body)``; counts no request."""

    def __init__(
        self, settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate, drain: DrainSwitch
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.gate = gate
        self.drain = drain
        self._overload = REJECTED.labels(settings.model, "overload")
        self._draining = REJECTED.labels(settings.model, "draining")

    async def infer(self, decoded: Decoded, request_id: str, arrived: float) -> tuple[int, bytes]:
        """``(200, payload)`` or ``(status, message)`` from the worker, 504 past the deadline (which
        runs from ``arrived``, a ``time.monotonic()``); raises :class:`WorkerUnavailable` on drain,
        overload or no live worker."""
        settings = self.settings
        if self.drain.draining:
            self._draining.inc()
            raise WorkerUnavailable("server is shutting down; retry on another replica")
        if not self.gate.try_enter():
            self._overload.inc()
            raise WorkerUnavailable(
                f"too many requests queued for {settings.model} (limit {self.gate.limit}); retry"
            )
        try:
            timeout = settings.request_timeout_s
            deadline = arrived + timeout
            link = await self.workers.pick()
            request = InferRequest(
                next(_uids), deadline, arrived, decoded.instances, decoded.answer_format, request_id
            )
            future = link.submit(request)
            remaining = max(0.0, deadline - time.monotonic())
            timer = asyncio.get_running_loop().call_later(remaining, _expire, future, timeout)
            try:
                return await future  # a reply that arrives after the deadline is dropped by the link
            finally:
                timer.cancel()
        finally:
            self.gate.leave()


def _expire(future: asyncio.Future, timeout: float) -> None:
    if not future.done():
        future.set_result((504, f"request exceeded its {timeout:g} s deadline".encode()))


def pipeline_for(
    settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate, drain: DrainSwitch
) -> WorkerPipeline:
    """The pipeline gRPC requests to one model take (the one line to change for ``InferencePipeline``)."""
    return WorkerPipeline(settings, workers, gate, drain)
