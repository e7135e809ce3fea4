"""What crosses between an API server and an inference worker: framed batches of requests and replies.

Both sides import this module and nothing of each other. One frame carries *every* request (or reply)
that was ready at the moment it was written, so a burst of requests costs one write and one wake-up
on each side instead of one per request.

A frame is a 4-byte little-endian length followed by a pickled list. Pickle is safe here: both ends
are processes of the same server, talking over a Unix socket in a private runtime folder.

The records are named tuples (:class:`InferRequest`, :class:`InferReply`): named for the reader,
tuples on the wire (pickle writes the class once per frame, then the fields).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, NamedTuple

import numpy as np


class InferRequest(NamedTuple):
    """One request, API server to worker."""

    uid: int  # unique within the sending API server's link; the reply carries it back
    deadline: float  # time.monotonic(): one clock for every process of the machine
    enqueued_at: float  # time.monotonic() when the request arrived at the API server
    instances: np.ndarray  # validated float32, shaped [n, *input_shape]
    answer_format: int  # what a 200 carries: PREDICTIONS_JSON or PROBABILITIES_F32
    request_id: str  # names the request in the worker's log lines
    trace: str | None = None  # W3C traceparent of a sampled request's server span; None: not traced
    priority: int = 1  # 1 is the highest; the worker batches higher priorities first
    # time.monotonic() by which the worker must finish it for its answer to reach the client within the
    # model's latency target (the API server's own turns taken off); inf without a target. Past it
    # the worker sheds it (503) rather than answer late.
    answer_by: float = float("inf")

    @property
    def size(self) -> int:
        """Instances in the request: what batching counts."""
        return int(self.instances.shape[0])


class InferReply(NamedTuple):
    """One answer, worker to API server."""

    uid: int
    status: int  # an HTTP status code
    body: bytes  # the answer in the requested format for 200, else the error message (UTF-8)


PREDICTIONS_JSON = 0  # the V1 predictions array, ready to frame into the response
PROBABILITIES_F32 = 1  # the raw float32 probability matrix, row-major (the V2 route formats it)

_HEADER = struct.Struct("<I")
MAX_FRAME_BYTES = 1 << 31


def encode_frame(items: list[Any]) -> bytes:
    """One frame holding ``items`` (requests or replies)."""
    payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Turns a byte stream into the lists that :func:`encode_frame` framed, however it was split."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Every item of every frame completed by ``data``, in order."""
        buffer = self._buffer
        buffer += data
        items: list[Any] = []
        offset = 0
        end = len(buffer)
        while end - offset >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer, offset)
            if length >= MAX_FRAME_BYTES:
                raise ValueError(f"frame of {length} bytes is larger than {MAX_FRAME_BYTES}")
            start = offset + _HEADER.size
            if end - start < length:
                break
            items.extend(pickle.loads(buffer[start : start + length]))
            offset = start + length
        if offset:
            del buffer[:offset]
        return items
