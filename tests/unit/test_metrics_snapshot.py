"""utils/serving/metrics_snapshot.py: one read of the metric files shared by the callers waiting
for it, spaced to a share of the time, each answer read after its caller asked."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from utils.serving import metrics
from utils.serving.metrics_snapshot import Coalesced, Snapshot, take


class Clock:
    """A fake monotonic clock: `sleep` and each read advance it by what they are told."""

    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def test_every_value_was_read_after_its_caller_asked() -> None:
    clock = Clock()
    reads: list[float] = []

    def read() -> int:
        reads.append(clock.t)
        clock.t += 0.002  # a read takes 2 ms (of CPU)
        return len(reads)

    fresh = Coalesced(read, share=0.1, clock=clock, sleep=clock.sleep, cpu_clock=clock)
    assert fresh.get() == 1
    asked = clock.t
    assert fresh.since(asked) is None  # the value was read before this caller asked
    clock.t += 0.001
    assert fresh.get(asked) == 2  # so it reads again...
    assert clock.slept == [pytest.approx(0.017)]  # ...once 20 ms (2 ms / 0.1) had passed
    assert reads[1] >= asked
    assert fresh.since(asked) == 2 and fresh.get(asked) == 2  # a caller of before: no read
    clock.t += 1.0
    assert fresh.get() == 3 and clock.slept == [pytest.approx(0.017)]  # spaced enough already


def test_callers_arriving_during_a_read_share_the_next_one() -> None:
    """However many ask at once, a worker reads once per round of callers."""
    started, release = threading.Event(), threading.Event()
    reads = 0

    def read() -> int:
        nonlocal reads
        reads += 1
        if reads == 1:
            started.set()
            release.wait(10)
        return reads

    fresh = Coalesced(read, share=1.0)
    first = threading.Thread(target=fresh.get)
    first.start()
    assert started.wait(10)
    got: list[int] = []
    callers = [threading.Thread(target=lambda: got.append(fresh.get())) for _ in range(12)]
    for caller in callers:
        caller.start()
    release.set()
    for thread in (first, *callers):
        thread.join(10)
    assert reads == 2  # the first, and one for the twelve that came while it ran
    assert got == [2] * 12


def test_share_must_be_a_fraction() -> None:
    for share in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError, match="share"):
            Coalesced(lambda: 1, share=share)


def test_snapshot_text_and_values_come_from_one_collection() -> None:
    registry = CollectorRegistry()
    requests = Counter("req", "requests", ["code"], registry=registry)
    latency = Histogram("lat", "latency", buckets=(0.1, 1.0), registry=registry)
    requests.labels("200").inc(3)
    latency.observe(0.5)
    snap = Snapshot(list(registry.collect()))
    assert snap.value("req_total", {"code": "200"}) == 3.0
    assert snap.value("req_total", {"code": "404"}) == 0.0  # absent reads 0
    assert snap.value("lat_count") == 1.0
    assert not snap.has_text  # written when asked for, once
    assert snap.text() == generate_latest(registry) and snap.has_text


def test_histogram_samples_are_in_exposition_order(tmp_path: Path) -> None:
    """Buckets by `le`, then `_count`, then `_sum` (MultiProcessCollector gives `_sum`
    first; BentoML sorts a first read, then writes its text from a second, unsorted one)."""
    store = MmapedDict(str(tmp_path / "histogram_7.db"))
    for name, labels, value in (
        ("lat_sum", {}, 0.5),
        ("lat_bucket", {"le": "+Inf"}, 0.0),
        ("lat_bucket", {"le": "0.1"}, 1.0),
    ):
        store.write_value(mmap_key("lat", name, list(labels), list(labels.values()), "h"), value, 0)
    store.close()
    snap = take(str(tmp_path))
    (family,) = text_string_to_metric_families(snap.text().decode())
    assert [(s.name, s.labels.get("le")) for s in family.samples] == [
        ("lat_bucket", "0.1"),
        ("lat_bucket", "+Inf"),
        ("lat_count", None),
        ("lat_sum", None),
    ]
    assert snap.value("lat_count") == 1.0 and snap.value("lat_sum") == 0.5


def test_every_labelled_metric_has_its_known_label_values() -> None:
    """`initialise` can only write what `KNOWN_LABELS` lists: every labelled rfloc metric
    with a single label is there (the model's info is written from the served model)."""
    labelled = {
        m
        for m in vars(metrics).values()
        if hasattr(m, "_labelnames") and len(getattr(m, "_labelnames", ())) == 1
    }
    missing = labelled - set(metrics.KNOWN_LABELS)
    assert not missing, f"add each to KNOWN_LABELS in utils/serving/metrics.py: {missing}"
    for metric, values in metrics.KNOWN_LABELS.items():
        assert values and len(set(values)) == len(values), metric
