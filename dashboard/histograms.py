"""Log-spaced histograms: how the rollup keeps latencies and speeds so percentiles can be read
back for any set of days and models without keeping every value.

A value x > 0 falls in bucket b = floor(BUCKETS_PER_DECADE * log10(x)), which holds
[10**(b/B), 10**((b+1)/B)); a percentile is read as the geometric middle of the bucket it falls
in, so it is never further from the true value than one bucket's width (about 12% of the
value with B = 20). Values at or below FLOOR share the lowest bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from django.db.models import Expression, F, FloatField, IntegerField, Value
from django.db.models.functions import Cast, Floor, Greatest, Ln

BUCKETS_PER_DECADE = 20
FLOOR = 1e-3  # the smallest value told apart: 1 µs of latency, 0.001 tokens/s

Histogram = dict[int, int]


def bucket_of(value: float) -> int:
    """The bucket of one value (the same arithmetic as `bucket_expression`, in Python)."""
    return math.floor(math.log(max(value, FLOOR)) * BUCKETS_PER_DECADE / math.log(10))


def bucket_bounds(bucket: int) -> tuple[float, float]:
    return 10 ** (bucket / BUCKETS_PER_DECADE), 10 ** ((bucket + 1) / BUCKETS_PER_DECADE)


def bucket_expression(field: str) -> Expression:
    """The bucket of a column, computed by the database (ln works on SQLite and PostgreSQL)."""
    scaled = Ln(Greatest(F(field), Value(FLOOR, output_field=FloatField()))) * Value(
        BUCKETS_PER_DECADE / math.log(10), output_field=FloatField()
    )
    return Cast(Floor(scaled), IntegerField())


def merge(into: Histogram, other: Mapping[int | str, int]) -> Histogram:
    """Adds `other` to `into` (JSON keys come back as strings) and returns `into`."""
    for bucket, count in other.items():
        into[int(bucket)] = into.get(int(bucket), 0) + count
    return into


def total(histograms: Iterable[Mapping[int | str, int]]) -> Histogram:
    merged: Histogram = {}
    for histogram in histograms:
        merge(merged, histogram)
    return merged


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The q-th percentile (0 < q <= 100), or None for an empty histogram."""
    count = sum(histogram.values())
    if not count:
        return None
    rank = max(1, math.ceil(q / 100 * count))  # nearest rank: the smallest value with rank values at or below it
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            low, high = bucket_bounds(bucket)
            return math.sqrt(low * high)
    raise AssertionError("unreachable: the ranks add up to count")
