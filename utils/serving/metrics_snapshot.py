"""One read of every worker's metrics, shared by the `/metrics` and `/model/info` asking at once.

Reading the Prometheus multiprocess folder parses every worker's files; BentoML's `/metrics`
parsed them twice a scrape and `/model/info` five times (one `get_sample_value` per figure),
so clients polling either cost the workers' CPU, and the predictions beside them, in
proportion. A `Snapshot` is one read: the exposition text and every sample's value.
`Coalesced` shares one read among the callers waiting for it and spaces reads so that they
take at most `METRICS_READ_SHARE` of a core, however many clients ask; every answer still
reflects what was written before its request. Before each read, dead workers' files are
merged (`utils/serving/metric_files.py`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from utils.serving import metric_files

T = TypeVar("T")
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class Snapshot:
    """Every metric family as read once: each sample's value, and the exposition text, written
    on first use (only `/metrics` needs it: it costs more than the read itself)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families
        self.values: dict[SampleKey, float] = {
            (s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in families
            for s in family.samples
        }
        self._text: bytes | None = None
        self._lock = threading.Lock()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's value; 0 when it does not exist (yet)."""
        return self.values.get((name, tuple(sorted((labels or {}).items()))), 0.0)

    @property
    def has_text(self) -> bool:
        return self._text is not None

    def text(self) -> bytes:
        """The Prometheus text of these families (blocks the first time: call off the loop)."""
        with self._lock:
            if self._text is None:
                for family in self.families:
                    if family.type == "histogram":
                        family.samples.sort(key=_histogram_order)
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Collected(self.families))  # type: ignore[arg-type]
                self._text = generate_latest(registry)
            return self._text


class _Collected:
    """A collector handing out families already read (the text is written from them)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _histogram_order(sample: Any) -> tuple[tuple[tuple[str, str], ...], int, float]:
    """Buckets by `le`, then `_count`, then `_sum` per label set (the exposition order,
    as BentoML's own `/metrics` sorts what `MultiProcessCollector` gives)."""
    rest = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    if sample.name.endswith("_bucket"):
        return rest, 0, float(sample.labels.get("le", 0))
    return rest, 1 if sample.name.endswith("_count") else 2, 0.0


def take(directory: str | None = None) -> Snapshot:
    """Read the multiprocess folder once (after merging dead workers' files); without one
    (`PROMETHEUS_MULTIPROC_DIR` unset: in-process use), this process's registry."""
    directory = directory if directory is not None else os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return Snapshot(list(REGISTRY.collect()))
    folder = Path(directory)
    metric_files.compact(folder)
    with metric_files.locked(folder):
        families = list(MultiProcessCollector(None, path=directory).collect())
    return Snapshot(families)


class Coalesced(Generic[T]):
    """Reads shared by the callers waiting for them, spaced to take at most `share` of the time.

    Every value a caller gets was read after it asked, so an answer never misses what was
    written before the request (a client reading its own predictions' counts sees them). One
    read runs at a time; callers arriving meanwhile share the next one, which starts once the
    time since the last read began is `1 / share` times the CPU time that read took. However
    many clients ask, reading takes at most `share` of one core, and a caller waits at most
    about `1 / share` reads. Thread-safe; `get` blocks (call it off the event loop).
    """

    def __init__(
        self,
        read: Callable[[], T],
        share: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError("share must be in (0, 1]")
        self._read = read
        self._share = share
        self._clock = clock
        self._sleep = sleep
        self._cpu_clock = cpu_clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._started = float("-inf")  # when the read that gave `_value` began
        self._next = float("-inf")  # the earliest start of the next read

    def now(self) -> float:
        """The time on this object's clock (what `since` and `get` take as `asked`)."""
        return self._clock()

    def since(self, asked: float) -> T | None:
        """The last value if its read began at or after `asked` (never blocks), else None."""
        value = self._value
        return value if value is not None and self._started >= asked else None

    def get(self, asked: float | None = None) -> T:
        """A value read after `asked` (default: now, on this object's clock)."""
        asked = self._clock() if asked is None else asked
        with self._lock:
            value = self.since(asked)  # read by another caller while this one waited
            if value is not None:
                return value
            wait = self._next - self._clock()
            if wait > 0:
                self._sleep(wait)
            started, cpu = self._clock(), self._cpu_clock()
            value = self._read()
            took = self._cpu_clock() - cpu  # CPU, not the wall time a busy core stretches
            self._value, self._started = value, started
            self._next = started + took / self._share
            return value
