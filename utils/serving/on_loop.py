"""Where the greedy batcher runs a batch: on the worker's event loop or in a thread
(`BATCH_ON_LOOP`).

A batch in a worker thread leaves the event loop free to read the next requests, but the hand-off
costs: a thread wake-up each way, and the two threads of one worker contend for the GIL and for
the one core the worker has. For a model whose batch is cheap that costs more than it saves:
on the demo model (0.6 ms a sample) the event loop served c=1 in 2.7-3.2 ms at the median with
batches on it, against 3.8 ms through a thread, and c=32 as fast or faster (docs/tails.md).
For a model whose batch takes long, a batch on the loop would hold every other request of the
worker (health checks and `/metrics` included) for all of it.

`auto` decides per model at load from its measured `BatchProfile`, holding the loop at most
`MAX_LOOP_BATCH_S` at a time: every batch on the loop when a full batch (`BATCH_MAX_SIZE`
samples at the measured per-sample cost) fits (the demo model: 5-7 ms); else a lone request
on the loop and larger batches in the thread when one inference fits (the ResNet-18 benchmark
model: 5.4 ms alone, 27 ms for 8; its c=1 p50 went from 7.6 to 6.9 ms with the lone request on
the loop); else everything in the thread.
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
) -> int:
    """The largest batch run on the event loop (0: none, larger ones go to the thread): all
    or none as the operator set it; else `auto`'s (the thread when nothing was measured)."""
    if setting != "auto":
        return max_batch_size if setting else 0
    if profile is None:
        return 0
    if full_batch_s(profile, max_batch_size) <= MAX_LOOP_BATCH_S:
        return max_batch_size
    return 1 if profile.single_s <= MAX_LOOP_BATCH_S else 0


def where(on_loop: int, max_batch_size: int) -> str:
    """Where batches run, for the start-up log."""
    if on_loop >= max_batch_size:
        return "batches on the event loop"
    if on_loop >= 1:
        return "a lone request on the event loop, batches in a worker thread"
    return "batches in a worker thread"
