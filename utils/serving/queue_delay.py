"""How long an item arriving at an idle greedy batcher waits for company (`BATCH_QUEUE_DELAY_MS`).

Waiting costs a lone request the whole wait and pays only when a sample is cheaper in a batch.
`auto` (the default) decides from the model's measured `BatchProfile`:

- per-sample cost at batch 8 more than 80 % of batch 1's (gain < 1.25; the demo MLP, whose
  gain is 1.0): no wait, as Triton's and TF-Serving's CPU guidance start;
- otherwise half a single inference, at most 10 ms: on the ResNet-18 benchmark model (6.2 ms
  single inference) 3 ms took c=32 throughput from 243 to 290 req/s and its p99 from 340 to
  206 ms, for 2.6 ms more at c=1 (`benchmarks/results/compare-resnet18*.md`). Half an inference
  bounds the lone request's penalty while letting the requests that were being decoded, when
  the batcher went idle, join the batch instead of waiting a whole small batch behind it.
"""

from __future__ import annotations

from typing import Literal

from utils.model.batch_profile import BatchProfile

MIN_GAIN = 1.25
SHARE_OF_SINGLE = 0.5
MAX_AUTO_S = 0.010


def auto_queue_delay_s(profile: BatchProfile) -> float:
    if profile.gain < MIN_GAIN:
        return 0.0
    return min(SHARE_OF_SINGLE * profile.single_s, MAX_AUTO_S)


def queue_delay_s(setting: float | Literal["auto"], profile: BatchProfile | None) -> float:
    """The wait for a model: the operator's figure (ms) when set, else `auto`'s."""
    if setting != "auto":
        return float(setting) / 1000.0
    return auto_queue_delay_s(profile) if profile is not None else 0.0
