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
from torch import nn

from service.messages import InferRequest
from service.tracing import otlp_wire
from service.tracing.context import new_span_id, parse_traceparent
from service.tracing.export import SpanExport
from service.tracing.otlp_wire import INTERNAL

QUEUE = otlp_wire.name_field("queue")
FORWARD = otlp_wire.name_field("forward")


@dataclass
class ModuleTimings:
    """What the hooks saw during one forward pass: (encoded span name, parent index, start ns, end ns)."""

    spans: list[list] = field(default_factory=list)
    _open: list[int] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0


class BatchTracer:
    """Records the spans of traced batches of one model (see the module docstring)."""

    def __init__(
        self, export: SpanExport, model: str, modules: dict[str, nn.Module], precision: str, device: str
    ) -> None:
        self.export = export
        self.modules = modules
        self._names = {name: otlp_wire.name_field(name) for name in modules}
        # On CUDA a host clock times kernel launches, not kernels: a traced batch synchronizes at each
        # module boundary, so its module spans are true (that batch runs slower; untraced ones do not).
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else None
        self._forward_attributes = otlp_wire.attributes(
            {"hookserve.model": model, "hookserve.precision": precision, "hookserve.device": device}
        )

    @contextlib.contextmanager
    def recording(self) -> Iterator[ModuleTimings]:
        """Time the forward pass and every monitored module in it (hooks only for this pass)."""
        timings = ModuleTimings()
        clock = _synced(time.perf_counter_ns, self.sync) if self.sync else time.perf_counter_ns
        handles = []
        for name, module in self.modules.items():
            handles.append(module.register_forward_pre_hook(_opener(timings, self._names[name], clock)))
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
        perf_to_epoch = time.time_ns() - time.perf_counter_ns()
        monotonic_to_epoch = time.time_ns() - time.monotonic_ns()
        batch_size = 0
        for request in traced:
            batch_size += request.size
        forward_attributes = self._forward_attributes + otlp_wire.attributes(
            {"hookserve.batch_size": batch_size}
        )
        forward_start = perf_to_epoch + timings.start_ns
        forward_end = perf_to_epoch + timings.end_ns
        queue_end = monotonic_to_epoch + int(batch_started * 1e9)
        span = otlp_wire.span
        spans: list[bytes] = []
        for request in traced:
            parent = parse_traceparent(request.trace)
            if parent is None:
                continue
            trace_id, parent_id = parent.trace_id, parent.span_id
            request_id = otlp_wire.attributes({"hookserve.request_id": request.request_id})
            queue_start = monotonic_to_epoch + int(request.enqueued_at * 1e9)
            spans.append(
                span(trace_id, new_span_id(), parent_id, QUEUE, INTERNAL, queue_start, queue_end, request_id)
            )
            forward_id = new_span_id()
            spans.append(span(
                trace_id, forward_id, parent_id, FORWARD, INTERNAL, forward_start, forward_end,
                forward_attributes + request_id,
            ))  # fmt: skip
            ids: list[bytes] = []
            for name, parent_index, start, end in timings.spans:
                span_id = new_span_id()
                ids.append(span_id)
                module_parent = forward_id if parent_index < 0 else ids[parent_index]
                start_ns = perf_to_epoch + start
                end_ns = perf_to_epoch + end if end else start_ns
                spans.append(span(trace_id, span_id, module_parent, name, INTERNAL, start_ns, end_ns))
        self.export.add(spans)


def _synced(clock: Callable[[], int], sync: Callable[[], None]) -> Callable[[], int]:
    def synced_clock() -> int:
        sync()
        return clock()

    return synced_clock


def _opener(timings: ModuleTimings, name: bytes, clock: Callable[[], int]) -> Callable[..., None]:
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
