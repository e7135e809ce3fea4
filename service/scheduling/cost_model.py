"""What a forward pass of ``b`` instances costs, learned online in the inference worker.

Two views of the same observations, both O(1) per batch and pure Python (no numpy on the hot path):

* a line ``t(b) = alpha * b + beta`` fitted by exponentially weighted least squares (recent batches
  count most; ``half_life`` batches halve a batch's weight). It is what the API servers read at the door
  (admission needs two numbers). The warm-up's batches are kept as a small prior that never decays, so
  the fit stays defined when live traffic only ever brings one batch size (e.g. b=1 at low load): the
  level then follows live traffic and the slope comes from the warm-up;
* a table per batch-size bucket (powers of two) of how far the curve is from the line there: the
  exponentially weighted mean batch size and ratio ``seconds / line(size)`` of the batches seen in each
  (weights age with every batch, and an unseen bucket's ratio drifts back to 1, the line).
  :meth:`CostModel.predict` interpolates ``line(size) * ratio`` between buckets, so a curve that is not
  a line (per-instance cost rising past some size, i.e. an interior throughput optimum) is seen by the
  batch policy, while a change of level, which every batch tells the line about, is followed at once
  even in buckets that are rarely seen.

Outliers (a GC pause, a noisy neighbour) are clipped before they are learned, to ``CLIP`` robust scales
or ``RELATIVE_CLIP`` of the current prediction, whichever is wider. The scale adapts (an exponentially
weighted mean absolute residual that may grow by a bounded factor per batch), so a lasting change of
the curve is followed within tens of batches while a single spike moves the fit by little.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

CLIP = 3.0  # residuals past this many scales are clipped...
RELATIVE_CLIP = 0.5  # ...or past this fraction of the prediction, whichever is wider
SCALE_GROWTH = 4.0  # one residual moves the scale by at most this many scales
MIN_SCALE_S = 1e-6
PRIOR_WEIGHT = 0.05  # a warm-up batch against ~144 live ones (half-life 100): it only breaks ties


def bucket_of(batch_size: int) -> int:
    """The bucket of a batch size: the power of two at or below it (1, 2, 4, 8, ...)."""
    return 1 << (max(1, batch_size).bit_length() - 1)


def bucket_sizes(max_batch_size: int) -> list[int]:
    """The buckets up to ``max_batch_size`` (powers of two, plus the maximum itself)."""
    sizes = [1 << i for i in range(max(1, max_batch_size).bit_length()) if 1 << i <= max_batch_size]
    return sizes if sizes[-1] == max_batch_size else [*sizes, max_batch_size]


@dataclass
class _Bucket:
    size: float  # weighted mean batch size seen in this bucket
    ratio: float  # weighted mean of observed time / the line's time
    weight: float
    seen_at: int  # the model's observation count when this bucket last saw a batch


class CostModel:
    """Forward time against batch size for one model in one worker (see the module docstring)."""

    def __init__(self, half_life: float = 100.0) -> None:
        self._decay = 0.5 ** (1.0 / half_life)
        self._live = [0.0] * 5  # decayed sums: w, w*b, w*t, w*b*b, w*b*t
        self._prior = [0.0] * 5  # the warm-up's batches, never decayed
        self._buckets: dict[int, _Bucket] = {}
        self._ordered: list[_Bucket] = []  # buckets by size, for interpolation
        self._scale = 0.0
        self.alpha = 0.0
        self.beta = 0.0
        self.observations = 0

    # --- learning ---------------------------------------------------------------------------------------
    def seed(self, batch_size: int, seconds: float) -> None:
        """A warm-up batch: kept as a prior that never decays (it keeps the slope defined)."""
        if batch_size < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        _add(self._prior, PRIOR_WEIGHT, batch_size, seconds)
        self._scale = max(self._scale, 0.1 * seconds, MIN_SCALE_S)
        self.observations += 1
        self._refit()

    def observe(self, batch_size: int, seconds: float) -> None:
        """A served batch of ``batch_size`` instances whose forward pass took ``seconds``."""
        if batch_size < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        if self.observations:
            seconds = self._clipped(batch_size, seconds)
        else:
            self._scale = max(0.1 * seconds, MIN_SCALE_S)
        live = self._live
        for i in range(5):
            live[i] *= self._decay
        _add(live, 1.0, batch_size, seconds)
        self.observations += 1
        self._refit()
        line = self.line(batch_size)
        if line > 0:
            self._learn_bucket(batch_size, seconds / line)

    def _clipped(self, batch_size: int, seconds: float) -> float:
        predicted = self.predict(batch_size)
        residual = seconds - predicted
        scale = self._scale
        size = abs(residual)
        self._scale = max(MIN_SCALE_S, 0.95 * scale + 0.05 * min(size, SCALE_GROWTH * scale))
        bound = max(CLIP * scale, RELATIVE_CLIP * predicted)
        if size <= bound:
            return seconds
        return predicted + math.copysign(bound, residual)

    def _learn_bucket(self, batch_size: int, ratio: float) -> None:
        key = bucket_of(batch_size)
        bucket = self._buckets.get(key)
        now = self.observations
        if bucket is None:
            self._buckets[key] = _Bucket(float(batch_size), ratio, 1.0, now)
            self._ordered = [self._buckets[k] for k in sorted(self._buckets)]
            return
        # Weights age with every batch the model sees, not only this bucket's: a rarely used size's old
        # ratio is soon outweighed when it is seen again.
        total = bucket.weight * self._decay ** (now - bucket.seen_at) + 1.0
        share = 1.0 / total
        bucket.size += share * (batch_size - bucket.size)
        bucket.ratio += share * (ratio - bucket.ratio)
        bucket.weight = total
        bucket.seen_at = now

    def _ratio(self, bucket: _Bucket) -> float:
        """A bucket's ratio, drifting back to the line (1) as it ages unseen: old news of a size that is
        no longer used (e.g. because it was slow) must not freeze the curve forever."""
        return 1.0 + (bucket.ratio - 1.0) * self._decay ** (self.observations - bucket.seen_at)

    def _refit(self) -> None:
        w, sb, st, sbb, sbt = (a + b for a, b in zip(self._live, self._prior, strict=True))
        if w <= 0:
            return
        det = w * sbb - sb * sb
        if det <= 1e-9 * w * sbb:  # one batch size only: any split of the cost fits; keep it proportional
            alpha, beta = st / sb, 0.0
        else:
            alpha = (w * sbt - sb * st) / det
            beta = (st - alpha * sb) / w
        if beta < 0:  # fixed cost cannot be negative: refit through the origin
            alpha, beta = sbt / sbb, 0.0
        if alpha < 0:  # nor can more instances cost less: a flat curve
            alpha, beta = 0.0, st / w
        self.alpha, self.beta = alpha, beta

    # --- predicting -------------------------------------------------------------------------------------
    def line(self, batch_size: float) -> float:
        """The fitted line's forward time for ``batch_size`` instances, in seconds."""
        return self.alpha * batch_size + self.beta

    def predict(self, batch_size: float) -> float:
        """Forward time for ``batch_size`` instances: the line, times the buckets' ratio (interpolated
        between buckets, the nearest one's beyond them)."""
        ordered = self._ordered
        line = self.line(batch_size)
        if not ordered:
            return line
        first, last = ordered[0], ordered[-1]
        if batch_size <= first.size:
            return line * self._ratio(first)
        if batch_size >= last.size:
            return line * self._ratio(last)
        for low, high in itertools.pairwise(ordered):
            if batch_size <= high.size:
                at_low = self.line(low.size) * self._ratio(low)
                at_high = self.line(high.size) * self._ratio(high)
                span = high.size - low.size
                if span <= 0:
                    return at_high
                return at_low + (at_high - at_low) * (batch_size - low.size) / span
        return line * self._ratio(last)  # unreachable: batch_size < last.size

    def knots(self) -> list[int]:
        """The batch sizes where the interpolated curve may bend (where throughput can peak)."""
        return sorted({max(1, round(b.size)) for b in self._ordered})


def _add(sums: list[float], weight: float, batch_size: float, seconds: float) -> None:
    sums[0] += weight
    sums[1] += weight * batch_size
    sums[2] += weight * seconds
    sums[3] += weight * batch_size * batch_size
    sums[4] += weight * batch_size * seconds
