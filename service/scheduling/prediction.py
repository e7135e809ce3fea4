"""How long a request would take to answer, from the queue and the cost line: the admission formula.

With ``Q`` instances admitted and not yet answered for the model (queued or running, summed over every
API server), a request of ``n`` instances, ``W`` workers that have published a cost line
``t(b) = alpha * b + beta`` and ``max_batch_size`` ``B``::

    ahead     = Q / W + n                       # the work on the worker it lands on, its own included
    batches   = ceil(ahead / B)                 # the worker takes up to B instances per forward pass
    predicted = alpha * ahead + beta * batches  # seconds until its answer

That is ``ahead`` divided by the throughput ``B / t(B)`` of full batches, with the last, partial batch
charged ``beta`` like any other; for ``ahead <= B`` it is simply ``t(ahead)``. It is the forward time
only (the request's transfer and encoding are not in the cost line), so it slightly underestimates.
"""

from __future__ import annotations

import math


def predicted_answer_s(
    queued: int, instances: int, alpha: float, beta: float, workers: int, max_batch_size: int
) -> float:
    """Seconds until a request of ``instances`` would be answered (see the module docstring)."""
    ahead = queued / max(1, workers) + instances
    batches = -(-ahead // max_batch_size)
    return alpha * ahead + beta * batches


def retry_after_s(predicted_s: float, target_s: float) -> int:
    """Whole seconds (at least 1, as ``Retry-After`` requires) until the excess work would have drained,
    if nothing else arrived: the prediction's excess over the target."""
    return max(1, math.ceil(predicted_s - target_s))
