"""How many instances a request holds, guessed from its ``Content-Length`` before its body is read.

The early refusal (:meth:`~service.http.admission.AdmissionGate.refuse_early`) runs before the body is
read and decoded, when the request's instance count is not known yet. Testing it as one instance let
nearly every request through under a flood: admission fills the queue to just under the target, so the
queue ahead alone nearly always fits, and it was the request's own instances that tipped it over, at
admission, after its body had been decoded for nothing (py-spy: decoding was half of a flooded API
server's samples).

A route's bodies grow in proportion to their instances, so the bytes per instance of the requests it
decoded last (an exponentially weighted mean) turn a declared length into an estimate. The estimate is
held a little low (``slack``) so that a request that would fit is not refused on a guess; the admission
after decoding stays exact. Per route and API-server process; O(1) per request.
"""

from __future__ import annotations


class InstanceEstimate:
    """Instances per request from its body's length (see the module docstring)."""

    def __init__(self, max_instances: int, slack: float = 1.15, weight: float = 0.1) -> None:
        self.max_instances = max_instances
        self.slack = slack
        self.weight = weight
        self.bytes_per_instance: float | None = None  # None until a request was decoded

    def learn(self, body_bytes: int, instances: int) -> None:
        """One decoded request: ``instances`` read from ``body_bytes`` bytes."""
        if instances <= 0 or body_bytes <= 0:
            return
        sample = body_bytes / instances
        mean = self.bytes_per_instance
        self.bytes_per_instance = sample if mean is None else mean + self.weight * (sample - mean)

    def instances(self, declared_bytes: int | None) -> int:
        """The instances a body of ``declared_bytes`` (its ``Content-Length``) likely holds: at least 1,
        at most ``max_instances``; 1 without a declared length or before anything was learned."""
        per = self.bytes_per_instance
        if per is None or declared_bytes is None:
            return 1
        return max(1, min(self.max_instances, int(declared_bytes / (per * self.slack))))
