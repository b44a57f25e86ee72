"""Where the greedy batcher runs a batch: on the worker's event loop or in a thread
(`BATCH_ON_LOOP`).

A batch in a worker thread leaves the event loop free to read the next requests, but the hand-off
costs: a thread wake-up each way, and the two threads of one worker contend for the GIL and for
the one core the worker has. For a model whose batch is cheap that costs more than it saves:
on the demo model (0.6 ms a sample) the event loop served c=1 in 2.7-3.2 ms at the median with
batches on it, against 3.8 ms through a thread, and c=32 as fast or faster (README, "Tails").
For a model whose batch takes long, a batch on the loop would hold every other request of the
worker (health checks and `/metrics` included) for all of it.

`auto` decides per model at load from its measured `BatchProfile`: on the loop when a full batch
(`BATCH_MAX_SIZE` samples at the measured per-sample cost) takes at most `MAX_LOOP_BATCH_S`,
in a thread otherwise (the ResNet-18 benchmark model: about 10 ms a sample).
"""

from __future__ import annotations

from typing import Literal

from utils.model.batch_profile import BatchProfile

#: The longest a batch may hold a worker's event loop under `auto`.
MAX_LOOP_BATCH_S = 0.010


def full_batch_s(profile: BatchProfile, max_batch_size: int) -> float:
    """A batch of `max_batch_size` at the per-sample cost measured at the profile's batch."""
    return profile.batch_s / profile.batch * max_batch_size


def batches_on_loop(
    setting: bool | Literal["auto"], profile: BatchProfile | None, max_batch_size: int
) -> bool:
    """The operator's choice when set; else `auto`'s (a thread when nothing was measured)."""
    if setting != "auto":
        return bool(setting)
    if profile is None:
        return False
    return full_batch_s(profile, max_batch_size) <= MAX_LOOP_BATCH_S
