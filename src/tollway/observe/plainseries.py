"""Counters and histograms kept as plain numbers, exposed at scrape time.

prometheus_client's labelled children take a lock per ``inc`` and walk their
buckets in Python per ``observe`` (~0.7 and ~2.5 µs). The hot series (the
HTTP requests per route, the ledger's batches, the charge path's outcomes)
are counted a dozen times a request, on the event loop's thread only, so they
are kept here as floats in lists and read by a collector when Prometheus
scrapes: the same names, labels, buckets and exposition as the library's own
series (tested against them), at a fraction of the cost. Other threads must
not count into them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

INF = float("inf")


class Count:
    """One counter child."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Spread:
    """One histogram child: the sum, then a count per bucket (the last: above every bound)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0.0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: "le"


C = TypeVar("C", "Count", "Spread")


class _Family(Collector, Generic[C]):
    """A metric family: its children by label values, each made once."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], registry: CollectorRegistry) -> None:
        self.name, self.doc, self.label_names = name, doc, list(labels)
        self._children: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # no clash checks against series made later; collect() says it all

    def labels(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.label_names):
                raise ValueError(f"{self.name}: expected labels {self.label_names}, got {values}")
            child = self._children[values] = self._child()
        return child

    def _child(self) -> C:
        raise NotImplementedError


class Counters(_Family[Count]):
    """A counter family, as ``prometheus_client.Counter(name, doc, labels)``."""

    def __init__(
        self, name: str, doc: str, labels: Sequence[str] = (), registry: CollectorRegistry = REGISTRY
    ) -> None:
        super().__init__(name.removesuffix("_total"), doc, labels, registry)

    def _child(self) -> Count:
        return Count()

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.label_names)
        for values, c in list(self._children.items()):
            fam.add_metric(list(values), c.value)
        yield fam


class Histograms(_Family[Spread]):
    """A histogram family, as ``prometheus_client.Histogram(name, doc, labels, buckets=...)``."""

    def __init__(
        self,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.bounds = tuple(float(b) for b in buckets if b != INF)
        super().__init__(name, doc, labels, registry)

    def _child(self) -> Spread:
        return Spread(self.bounds)

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.label_names)
        for values, s in list(self._children.items()):
            fam.add_metric(list(values), cumulative(self.bounds, list(s.counts)), s.sum)
        yield fam


def cumulative(bounds: tuple[float, ...], counts: list[float]) -> list[tuple[str, float]]:
    """Per-bucket counts as the exposition's cumulative ``le`` buckets."""
    out, total = [], 0.0
    for bound, n in zip((*bounds, INF), counts, strict=True):
        total += n
        out.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
    return out
