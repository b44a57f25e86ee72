"""How long an item arriving at an idle greedy batcher waits for company (`BATCH_QUEUE_DELAY_MS`).

Waiting pays only when a sample is cheaper in a batch, and only for requests that are coming:
the batcher waits at most this long, and only while the worker holds requests it has begun and
not yet submitted (`utils/serving/arrivals.py`), so a lone request never waits.

The default is 0: measured on CPU, waiting does not pay even for a model whose per-sample cost
falls with batch size. On the ResNet-18 benchmark model (1.6x cheaper per sample at batch 8),
`auto` (3 ms here) against 0, servers side by side, 6 interleaved rounds
(`benchmarks/results/steady-resnet18.md`): c=32 throughput 1.02x fresh and 0.98x after a
burst, c=1 0.94-0.98x, and c=8 0.86x / 0.61x with a p99 2.6x longer: with 4 clients per worker,
waiting for all of them puts decoding and inference in lockstep. Requests already batch while
a batch runs; on one core per worker that is enough.

`auto` is for where the gain is larger (a GPU: the per-sample cost keeps falling to batches of
tens): it decides from the model's measured `BatchProfile`: no wait when the per-sample cost at
batch 8 is more than 80 % of batch 1's (gain < 1.25; the demo MLP measures 1.1-1.5 at start-up
since its batches are preprocessed in cache-sized chunks: near the line, one more reason 0 is
the default), else half a single inference, at most 10 ms, which bounds what a request can
lose to the wait.
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
