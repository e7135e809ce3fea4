"""Read hookserve's ``/metrics`` (Prometheus text exposition) with prometheus_client's own parser.

Names here are *sample* names as they appear in the text: ``hookserve_requests_total``,
``hookserve_batch_size_count``, ``hookserve_batch_size_bucket`` (label ``le``), not family names. Labels
select samples whose labels include them; other labels may be present.
"""

from __future__ import annotations

from functools import lru_cache

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@lru_cache(maxsize=8)
def parse(text: str) -> tuple[Sample, ...]:
    """Every sample in ``text``, parsed once per distinct text (callers look up many series in one scrape)."""
    return tuple(sample for family in text_string_to_metric_families(text) for sample in family.samples)


def samples(text: str, name: str, **labels: str) -> list[Sample]:
    """The samples called ``name`` whose labels include ``labels``."""
    return [
        sample
        for sample in parse(text)
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def sum_samples(text: str, name: str, **labels: str) -> float:
    """The sum of :func:`samples` (0.0 when none match)."""
    return sum(sample.value for sample in samples(text, name, **labels))


def label_values(text: str, name: str, label: str, **labels: str) -> set[str]:
    """The values of ``label`` over the samples called ``name`` whose labels include ``labels``."""
    return {sample.labels[label] for sample in samples(text, name, **labels) if label in sample.labels}
