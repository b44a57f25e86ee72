"""What batching buys this model on this machine, measured once when it is loaded.

Whether a request should wait for company depends on the model: the demo MLP costs about the
same per sample at batch 1 and 8 (1.1-1.5x less at 8, measured at start-up, since batches are
preprocessed in cache-sized chunks), while a convolutional backbone on the same CPU costs 1.6x
less per sample at batch 8 (`benchmarks/results/compare-resnet18.md`), and on a GPU far more. With
`BATCH_QUEUE_DELAY_MS=auto` the load path times one inference of 1 and of `probe` captures
(after the warm-up, median of a few runs), and `utils/serving/queue_delay.py` turns that into
the greedy batcher's wait.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class _Predicts(Protocol):
    def predict(self, captures: list[np.ndarray], validated: bool = False) -> object: ...


@dataclass(frozen=True)
class BatchProfile:
    """One inference of 1 capture and of `batch` captures (preprocessing + ONNX), seconds."""

    single_s: float
    batch: int
    batch_s: float

    @property
    def gain(self) -> float:
        """How many times cheaper a sample is at `batch` than alone (about 1.1: little to
        gain, the demo model; 1.6: the ResNet-18 benchmark model on 2 CPU cores)."""
        per_sample = self.batch_s / self.batch
        return self.single_s / per_sample if per_sample > 0 else 1.0


def measure(
    runtime: _Predicts, captures: list[np.ndarray], batch: int, repeats: int = 3
) -> BatchProfile:
    """Median time of `repeats` inferences of 1 and of `batch` captures (reused in turn)."""
    group = [captures[i % len(captures)] for i in range(batch)]

    def timed(items: list[np.ndarray]) -> float:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            runtime.predict(items)
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    return BatchProfile(single_s=timed(group[:1]), batch=batch, batch_s=timed(group))
