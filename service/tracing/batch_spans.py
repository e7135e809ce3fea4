"""A batch's spans in the worker: each traced request's queue wait, the forward pass, and one span per
monitored module, named by its module path and timed by forward hooks.

The module hooks exist only while a batch that holds a traced request runs: they are registered before
its forward pass and removed after it, so untraced batches pay nothing. When several traced requests
share a batch, each trace gets its own copy of the batch's spans (a trace reads whole by itself).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from torch import nn

from service.messages import InferRequest

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class ModuleTimings:
    """What the hooks saw during one forward pass: (module path, parent index, start ns, end ns)."""

    spans: list[list] = field(default_factory=list)
    _open: list[int] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0


class BatchTracer:
    """Emits the spans of traced batches of one model (see the module docstring)."""

    def __init__(
        self, tracer: Tracer, model: str, modules: dict[str, nn.Module], precision: str, device: str
    ) -> None:
        self.tracer = tracer
        self.modules = modules
        # On CUDA a host clock times kernel launches, not kernels: a traced batch synchronizes at each
        # module boundary, so its module spans are true (that batch runs slower; untraced ones do not).
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else None
        self.attributes = {
            "hookserve.model": model,
            "hookserve.precision": precision,
            "hookserve.device": device,
        }

    @contextlib.contextmanager
    def recording(self) -> Iterator[ModuleTimings]:
        """Time the forward pass and every monitored module in it (hooks only for this pass)."""
        timings = ModuleTimings()
        clock = _synced(time.perf_counter_ns, self.sync) if self.sync else time.perf_counter_ns
        handles = []
        for name, module in self.modules.items():
            handles.append(module.register_forward_pre_hook(_opener(timings, name, clock)))
            handles.append(module.register_forward_hook(_closer(timings, clock)))
        timings.start_ns = clock()
        try:
            yield timings
        finally:
            timings.end_ns = clock()
            for handle in handles:
                handle.remove()

    def emit(self, traced: Sequence[InferRequest], timings: ModuleTimings, batch_started: float) -> None:
        """Each traced request's queue span, plus a copy of the batch's forward and module spans."""
        to_epoch = time.time_ns() - time.perf_counter_ns()
        monotonic_to_epoch = time.time_ns() - time.monotonic_ns()
        batch_size = 0
        for request in traced:
            batch_size += request.size
        for request in traced:
            parent = _PROPAGATOR.extract({"traceparent": request.trace})
            queue = self.tracer.start_span(
                "queue",
                context=parent,
                start_time=monotonic_to_epoch + int(request.enqueued_at * 1e9),
                attributes={"hookserve.request_id": request.request_id},
            )
            queue.end(end_time=monotonic_to_epoch + int(batch_started * 1e9))
            forward = self.tracer.start_span(
                "forward",
                context=parent,
                start_time=to_epoch + timings.start_ns,
                attributes={**self.attributes, "hookserve.batch_size": batch_size,
                            "hookserve.request_id": request.request_id},
            )  # fmt: skip
            self._emit_modules(forward, timings, to_epoch)
            forward.end(end_time=to_epoch + timings.end_ns)

    def _emit_modules(self, forward: trace.Span, timings: ModuleTimings, to_epoch: int) -> None:
        spans: list[trace.Span] = []
        for name, parent_index, start, end in timings.spans:
            parent = forward if parent_index < 0 else spans[parent_index]
            span = self.tracer.start_span(
                name, context=trace.set_span_in_context(parent), start_time=to_epoch + start
            )
            spans.append(span)
            span.end(end_time=to_epoch + (end or start))


def _synced(clock: Callable[[], int], sync: Callable[[], None]) -> Callable[[], int]:
    def synced_clock() -> int:
        sync()
        return clock()

    return synced_clock


def _opener(timings: ModuleTimings, name: str, clock: Callable[[], int]) -> Callable[..., None]:
    def pre_hook(module: nn.Module, args: object) -> None:
        parent = timings._open[-1] if timings._open else -1
        timings._open.append(len(timings.spans))
        timings.spans.append([name, parent, clock(), 0])

    return pre_hook


def _closer(timings: ModuleTimings, clock: Callable[[], int]) -> Callable[..., None]:
    def hook(module: nn.Module, args: object, output: object) -> None:
        if timings._open:
            timings.spans[timings._open.pop()][3] = clock()

    return hook
