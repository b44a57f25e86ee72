"""Taking up a new model without a restart: reload, rollback, the store watch, convergence.

One `ModelReloader` per worker. A reload request (`POST /model/reload`) is handled by the worker
it reaches: it resolves the tag, loads and checks the model beside the one serving (sha256,
contract, warm-up: `utils/model/served.py`), swaps it in, and publishes the new generation in
the shared folder (`utils/serving/model_control.py`); it then waits, bounded, until every worker
reports it. The other workers poll that folder and do the same load-check-swap. A model that
fails its checks is refused: the old one keeps serving, and the failure is reported (the
response, one log line, `rfloc_model_reloads_total{result="failed"}`).

The swap is atomic per worker (one attribute assignment on the event loop); a request keeps
the model it started with to its end, and a batch runs on one model (`utils/api/pipeline.py`).

Reloads are serialised across the workers (`ModelControl.try_lock_reload`): a reload waits, at
most `RELOAD_WAIT_S`, for one in progress to answer, else 409. Two reloads to different tags
could otherwise interleave (A publishes 2, B publishes 3, A's workers converge on 3) and answer
200 naming a model other than the one asked for. A 200 names the tag asked for, and says
whether every worker serves it; should the shared record have moved on before the answer, the
reload is 409, not a claim about a model it did not put in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import anyio.to_thread

from utils.model.runtime import ModelLoadError
from utils.model.served import ServedModel, StoredModel
from utils.serving import metrics
from utils.serving.model_control import DesiredModel, ModelControl, ReloadLock, WorkerStatus

log = logging.getLogger("bentoml.service.localization")

#: How often a worker looks at the shared folder: a reload reaches every worker within this.
POLL_S = 0.25
#: How often a reload waiting for another one in progress looks whether it has finished.
LOCK_POLL_S = 0.05


class ReloadRefused(Exception):
    """The requested model failed its checks; nothing changed."""

    status = 422


class ReloadConflict(Exception):
    """Another reload was in progress past the wait, or moved the model on before this one
    could answer: this one claims nothing (409); ask again."""

    status = 409


class Swappable(Protocol):
    served: ServedModel

    def swap(self, new: ServedModel) -> ServedModel: ...


@dataclass(frozen=True)
class ReloadOutcome:
    result: Literal["reloaded", "unchanged"]
    served: ServedModel
    previous: ServedModel
    generation: int
    workers: list[WorkerStatus]
    workers_agree: bool


def initial_model(
    control: ModelControl,
    start: StoredModel,
    resolve: Callable[[str | None], StoredModel],
    load: Callable[[StoredModel], ServedModel],
) -> tuple[ServedModel, int, str | None]:
    """What a starting worker serves: the shared record's model (so a worker restarted after
    a reload comes back on the reloaded one), else `start`. Should the record's model no
    longer pass its checks, `start`, with the reason: (model, generation, error)."""
    desired = control.desired()
    if desired is None:
        return load(start), 0, None
    if desired.tag == start.tag:
        return load(start), desired.generation, None
    try:
        return load(resolve(desired.tag)), desired.generation, None
    except (ModelLoadError, LookupError) as exc:
        metrics.MODEL_RELOADS.labels("failed").inc()
        log.error("cannot take up %s at start (%s); serving %s", desired.tag, exc, start.tag)
        return load(start), desired.generation, f"{desired.tag} refused: {exc}"


class ModelReloader:
    """Load-check-swap for one worker, driven by requests, the shared folder and the watch."""

    def __init__(
        self,
        target: Swappable,
        control: ModelControl,
        *,
        resolve: Callable[[str | None], StoredModel],
        load: Callable[[StoredModel], ServedModel],
        latest: Callable[[], str | None],
        expected_workers: int,
        watch_s: float = 0.0,
        converge_timeout_s: float = 30.0,
        generation: int = 0,
        error: str | None = None,
    ) -> None:
        self.target = target
        self.control = control
        self._resolve = resolve
        self._load = load
        self._latest = latest
        self.expected_workers = expected_workers
        self.watch_s = watch_s
        self.converge_timeout_s = converge_timeout_s
        self.generation = generation  # the desired generation this worker has acted on
        self.error = error  # why this worker refused the last model it tried, if it did
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._next_watch = time.monotonic() + watch_s

    # --- what this worker serves -------------------------------------------------------------
    def report(self) -> None:
        served = self.target.served
        self.control.report(
            WorkerStatus(
                pid=os.getpid(),
                bento_model_tag=served.tag,
                model_version=served.model_version,
                loaded_at=served.loaded_at,
                generation=self.generation,
                error=self.error,
            )
        )

    def workers(self) -> tuple[list[WorkerStatus], bool]:
        """Every live worker's report, and whether all expected workers serve one model (a
        refused reload leaves them agreeing on the old one; `error` says what was refused)."""
        found = self.control.workers()
        tags = {w.bento_model_tag for w in found}
        return found, len(found) >= self.expected_workers and len(tags) == 1

    # --- load, check, swap ---------------------------------------------------------------------
    async def _take_up(self, stored: StoredModel, why: str) -> bool:
        """Load and check beside the serving model, then swap. False (and reported) when the
        model is refused; the serving model is untouched then."""
        previous = self.target.served
        try:
            candidate = await anyio.to_thread.run_sync(self._load, stored)
        except ModelLoadError as exc:
            metrics.MODEL_RELOADS.labels("failed").inc()
            self.error = f"{stored.tag} refused: {exc}"
            log.error(
                "model reload (%s) refused %s, still serving %s: %s",
                why,
                stored.tag,
                previous.tag,
                exc,
            )
            return False
        self.target.swap(candidate)
        self.error = None
        metrics.MODEL_RELOADS.labels("success").inc()
        metrics.model_swapped(previous, candidate)
        log.info(
            "model reload (%s): now serving %s (%s), was %s (%s)",
            why,
            candidate.tag,
            candidate.model_version,
            previous.tag,
            previous.model_version,
        )
        return True

    async def reload(self, tag: str | None, why: str = "request") -> ReloadOutcome:
        """The operator's reload: `tag` (a rollback) or the newest import, once no other
        reload is in progress. Raises `UnknownModel` or `ReloadRefused` with nothing changed,
        `ReloadConflict` when another reload held on past the wait or overtook this one."""
        held = await self._lock_reload()
        try:
            return await self._reload_holding(tag, why)
        finally:
            held.release()

    async def _lock_reload(self) -> ReloadLock:
        """The cross-worker reload lock, waiting at most `converge_timeout_s` for it (polled:
        the event loop keeps serving, and this worker keeps following the one reloading)."""
        deadline = time.monotonic() + self.converge_timeout_s
        while (held := self.control.try_lock_reload()) is None:
            if time.monotonic() >= deadline:
                raise ReloadConflict(
                    f"another reload was still in progress after {self.converge_timeout_s:g} s;"
                    " nothing changed, ask again once it has answered"
                )
            await asyncio.sleep(LOCK_POLL_S)
        return held

    async def _reload_holding(self, tag: str | None, why: str) -> ReloadOutcome:
        """`reload`, the reload lock held: load-check-swap, publish, converge, then answer
        only for the model this reload put in place."""
        async with self._lock:
            stored = await anyio.to_thread.run_sync(self._resolve, tag)
            previous = self.target.served
            unchanged = stored.tag == previous.tag
            if unchanged:
                metrics.MODEL_RELOADS.labels("unchanged").inc()
            elif not await self._take_up(stored, why):
                self.report()
                raise ReloadRefused(self.error or f"{stored.tag} refused")
            desired = self.control.publish(stored.tag, why)
            self.generation = desired.generation
            self.report()
        workers = await self._converge(desired)
        now = self.control.desired()
        served = self.target.served
        if now is None or now.generation != desired.generation or served.tag != stored.tag:
            raise ReloadConflict(
                "another reload moved the service on before this one could answer; "
                "see /model/info for what is served"
            )
        agree = len(workers) >= self.expected_workers and all(
            w.bento_model_tag == stored.tag for w in workers
        )
        return ReloadOutcome(
            "unchanged" if unchanged else "reloaded",
            served,
            previous,
            desired.generation,
            workers,
            agree,
        )

    async def _converge(self, desired: DesiredModel) -> list[WorkerStatus]:
        """Wait (bounded) until every worker has acted on `desired`; their reports."""
        deadline = time.monotonic() + self.converge_timeout_s
        while True:
            workers = self.control.workers()
            acted = [w for w in workers if w.generation >= desired.generation]
            if len(acted) >= self.expected_workers or time.monotonic() > deadline:
                return workers
            await asyncio.sleep(POLL_S / 2)

    # --- following the others, and the store ----------------------------------------------------
    async def follow(self) -> None:
        """Take up a newer generation published by another worker (or by the watch)."""
        desired = self.control.desired()
        if desired is None or desired.generation <= self.generation:
            return
        async with self._lock:
            if desired.generation <= self.generation:
                return
            if desired.tag != self.target.served.tag:
                try:
                    stored = await anyio.to_thread.run_sync(self._resolve, desired.tag)
                except LookupError as exc:
                    self.error = f"{desired.tag}: {exc}"
                    metrics.MODEL_RELOADS.labels("failed").inc()
                    log.error("model reload (follow) cannot find %s: %s", desired.tag, exc)
                else:
                    await self._take_up(stored, "follow")
            else:
                self.error = None
            self.generation = desired.generation
            self.report()

    async def watch(self) -> None:
        """`MODEL_WATCH_SECONDS`: a new import of the model is taken up. The newest tag seen is
        shared, so one worker claims it, and a rollback is not undone by the next look. While
        a reload is in progress the watch does not wait (it runs in the loop that follows
        that reload): the next look sees the import again."""
        latest = await anyio.to_thread.run_sync(self._latest)
        if latest is None:
            return
        held = self.control.try_lock_reload()
        if held is None:
            return
        try:
            await self._watched(latest)
        finally:
            held.release()

    async def _watched(self, latest: str) -> None:
        """`watch`, the reload lock held."""
        claimed = False

        def claim(current: DesiredModel | None) -> DesiredModel | None:
            nonlocal claimed
            if current is None or current.watched_latest == latest:
                return None
            claimed = True
            return current.model_copy(update={"watched_latest": latest})

        self.control.update(claim)
        if claimed and latest != self.target.served.tag:
            try:
                await self._reload_holding(latest, "watch")
            except (LookupError, ReloadRefused):  # a refusal is logged and counted
                pass
            except ReloadConflict as exc:
                log.warning("model reload (watch) of %s: %s", latest, exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.follow()
                if self.watch_s > 0 and time.monotonic() >= self._next_watch:
                    self._next_watch = time.monotonic() + self.watch_s
                    await self.watch()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad look
                log.exception("model control loop")

    def start(self) -> None:
        self.report()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
