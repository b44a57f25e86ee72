"""Reload without a server: the shared control folder, the per-worker reloader, the pipeline's
swap (a request keeps its model, a batch runs on one model) and the operator's token."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from pydantic import SecretStr

from tests.support.model_factory import toy_model
from tests.unit.test_pipeline import Recorder, runtime_for, served
from utils.api.decoding import encode_capture
from utils.api.errors import AdminRefused, to_response
from utils.api.model_reload import authorize
from utils.api.pipeline import Pipeline, infer_batch, infer_canonical, infer_jobs
from utils.api.schemas import PredictRequest
from utils.dsp.synthetic import generate_scenes
from utils.model.runtime import ModelLoadError, ModelRuntime
from utils.model.served import ServedModel, StoredModel
from utils.serving.cache import LRUCache
from utils.serving.departure import Departure
from utils.serving.model_control import ModelControl, WorkerStatus
from utils.serving.model_store import UnknownModel, full_tag
from utils.serving.reload import ModelReloader, ReloadConflict, ReloadRefused, initial_model


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRuntime, ModelRuntime]:
    """Two toy models whose answers differ (the position bias moved by 0.01 degrees)."""
    a = runtime_for(tmp_path_factory.mktemp("a"), toy_model())
    model = toy_model()
    for init in model.graph.initializer:
        if init.name == "b":
            moved = onnx.numpy_helper.to_array(init) + np.float32(0.01)
            init.CopyFrom(onnx.numpy_helper.from_array(moved, "b"))
    b = runtime_for(tmp_path_factory.mktemp("b"), model)
    assert a.sha256 != b.sha256
    return a, b


@pytest.fixture(scope="module")
def scenes(two: tuple[ModelRuntime, ModelRuntime]) -> list[np.ndarray]:
    return list(generate_scenes(4, seed=3, spec=two[0].spec).iq)


# --- the shared folder ------------------------------------------------------------------------


def test_generations_count_up_and_the_first_record_is_kept(tmp_path: Path) -> None:
    control = ModelControl(tmp_path)
    assert control.desired() is None
    assert control.initialize("m:1", "m:1").generation == 0
    assert control.initialize("m:2", "m:2").tag == "m:1"  # a restarted worker does not reset
    assert control.publish("m:2", "request").generation == 1
    desired = control.publish("m:1", "request")
    assert (desired.generation, desired.tag, desired.watched_latest) == (2, "m:1", "m:1")
    assert control.desired() == desired


def _publish_many(folder: str, n: int) -> None:
    control = ModelControl(Path(folder))
    for _ in range(n):
        control.publish(f"m:{os.getpid()}", "request")


def test_concurrent_publishers_lose_no_generation(tmp_path: Path) -> None:
    """Read-modify-write under flock: 4 processes × 25 publishes are 100 generations."""
    ModelControl(tmp_path).initialize("m:0", None)
    procs = [
        multiprocessing.get_context("fork").Process(target=_publish_many, args=(str(tmp_path), 25))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert ModelControl(tmp_path).desired().generation == 100  # type: ignore[union-attr]


def test_reports_of_dead_workers_are_dropped(tmp_path: Path) -> None:
    control = ModelControl(tmp_path)
    dead = multiprocessing.get_context("fork").Process(target=lambda: None)
    dead.start()
    dead.join()
    for pid in (os.getpid(), dead.pid):
        control.report(WorkerStatus(pid=pid, bento_model_tag="m:1", model_version="1+a",
                                    loaded_at="t", generation=0))  # fmt: skip
    assert [w.pid for w in control.workers()] == [os.getpid()]
    assert not (tmp_path / f"worker-{dead.pid}.json").exists()


def test_the_serve_process_creates_the_folder_and_its_workers_inherit_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from utils.serving import model_control

    monkeypatch.delenv(model_control.ENV_VAR, raising=False)
    parent, created = ModelControl.for_serve_process()
    assert created and parent.folder.is_dir()
    assert os.environ[model_control.ENV_VAR] == str(parent.folder)
    child, created_again = ModelControl.for_serve_process()  # as a worker sees it
    assert child.folder == parent.folder and not created_again


def test_tags_are_versions_of_the_served_model() -> None:
    assert full_tag("m", None) == "m:latest"
    assert full_tag("m", "abc") == "m:abc"
    assert full_tag("m", "m:abc") == "m:abc"
    with pytest.raises(UnknownModel) as caught:
        full_tag("m", "other:abc")
    assert caught.value.status == 400


# --- the pipeline across a swap ---------------------------------------------------------------


def test_a_batch_with_two_models_runs_each_on_its_own(
    two: tuple[ModelRuntime, ModelRuntime], scenes: list[np.ndarray]
) -> None:
    a, b = two
    jobs = [(a, scenes[0]), (b, scenes[1]), (a, scenes[2]), (b, scenes[3])]
    mixed = infer_jobs(jobs)
    alone = [infer_batch(rt, [c])[0] for rt, c in jobs]
    for got, want in zip(mixed, alone, strict=True):
        np.testing.assert_allclose(got["position"], want["position"], rtol=1e-5)
    assert [m["batch_size"] for m in mixed] == [2, 2, 2, 2]
    assert mixed[0]["position"] != infer_batch(b, [scenes[0]])[0]["position"]


def test_pinned_infer_items_run_on_the_model_they_name(
    two: tuple[ModelRuntime, ModelRuntime], scenes: list[np.ndarray]
) -> None:
    a, b = two
    live = {a.sha256[:16]: a, b.sha256[:16]: b}

    def runtime_for(key: str | None) -> ModelRuntime | None:
        return a if key is None else live.get(key)

    text = encode_capture(scenes[0])
    out = infer_canonical(
        runtime_for, [f"{b.sha256[:16]}:{text}", text, f"{'0' * 16}:{text}", "junk"]
    )
    assert out[0]["position"] == infer_batch(b, [scenes[0]])[0]["position"]
    assert out[1]["position"] == infer_batch(a, [scenes[0]])[0]["position"]
    assert "not loaded" in out[2]["error"] and "canonical" in out[3]["error"]


class Gate(Recorder):
    """A dispatch that holds its first call until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(
        self,
        model: ServedModel,
        captures: list[np.ndarray],
        verbatim: str | None,
        _departure: Departure | None = None,
    ) -> list[dict[str, Any]]:
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        return await super().__call__(model, captures, verbatim)


def test_a_request_in_flight_finishes_on_the_model_it_started_with(
    two: tuple[ModelRuntime, ModelRuntime], scenes: list[np.ndarray]
) -> None:
    a, b = two
    gate = Gate()
    pipe = Pipeline(
        served(a, "1"), LRUCache(100, 60), gate, cache_prefix="t", max_samples=65_536,
        max_batch_items=10,
    )  # fmt: skip
    req = PredictRequest(iq_b64=encode_capture(scenes[0]), cache_enabled=False)

    async def scenario() -> tuple[str, str]:
        first = asyncio.create_task(pipe.predict_one(req, 0.0))
        await gate.entered.wait()
        previous = pipe.swap(served(b, "2"))
        assert previous.runtime is a
        second = await pipe.predict_one(req, 0.0)
        gate.release.set()
        return (await first).model_version, second.model_version

    old, new = asyncio.run(scenario())
    assert old.startswith("1+") and new.startswith("2+")
    assert pipe.runtime_for(a.sha256[:16]) is a  # pinned items of the old request still run
    assert pipe.runtime_for(None) is b


# --- the reloader -----------------------------------------------------------------------------


class FakeStore:
    """Tags -> stored entries; `broken` tags fail their checks."""

    def __init__(self, runtimes: dict[str, ModelRuntime], broken: set[str] = frozenset()) -> None:
        self.runtimes, self.broken = runtimes, set(broken)
        self.latest = list(runtimes)[-1]
        self.loads: list[str] = []

    def resolve(self, tag: str | None) -> StoredModel:
        tag = full_tag("m", tag or self.latest)
        if tag not in self.runtimes:
            raise UnknownModel(f"{tag} is not in the BentoML model store", 404)
        version = tag.split(":")[1]
        return StoredModel(tag, "m", version, Path("."), {}, "t")

    def load(self, stored: StoredModel) -> ServedModel:
        self.loads.append(stored.tag)
        if stored.tag in self.broken:
            raise ModelLoadError(f"{stored.tag}: model.onnx sha256 does not match")
        runtime = self.runtimes[stored.tag]
        return ServedModel(runtime, stored, runtime.version_label(stored.version), "t")


def reloader(
    folder: Path, store: FakeStore, start: str, watch_s: float = 0.0
) -> tuple[ModelReloader, Pipeline]:
    control = ModelControl(folder)
    desired = control.initialize(start, store.latest)
    pipe = Pipeline(
        store.load(store.resolve(desired.tag)), LRUCache(10, 60), Recorder(),
        cache_prefix="t", max_samples=65_536, max_batch_items=10,
    )  # fmt: skip
    r = ModelReloader(
        pipe, control, resolve=store.resolve, load=store.load, latest=lambda: store.latest,
        expected_workers=1, watch_s=watch_s, converge_timeout_s=2.0,
        generation=desired.generation,
    )  # fmt: skip
    return r, pipe


def test_workers_converge_on_a_reload_and_a_rollback(
    tmp_path: Path, two: tuple[ModelRuntime, ModelRuntime]
) -> None:
    a, b = two
    store = FakeStore({"m:1": a, "m:2": b})
    one, pipe_one = reloader(tmp_path, store, "m:1")
    two_, pipe_two = reloader(tmp_path, store, "m:1")  # same pid: one report file, fine

    async def scenario() -> None:
        outcome = await one.reload(None)  # the newest import
        assert outcome.result == "reloaded" and outcome.served.tag == "m:2"
        assert pipe_one.served.tag == "m:2" and pipe_two.served.tag == "m:1"
        await two_.follow()
        assert pipe_two.served.tag == "m:2" and two_.generation == 1
        back = await two_.reload("1")
        assert back.previous.tag == "m:2" and pipe_two.served.tag == "m:1"
        await one.follow()
        assert pipe_one.served.tag == "m:1"
        again = await one.reload("m:1")
        assert again.result == "unchanged"

    asyncio.run(scenario())


def test_a_model_that_fails_its_checks_is_refused_and_the_old_keeps_serving(
    tmp_path: Path, two: tuple[ModelRuntime, ModelRuntime]
) -> None:
    a, b = two
    store = FakeStore({"m:1": a, "m:2": b}, broken={"m:2"})
    r, pipe = reloader(tmp_path, store, "m:1")
    with pytest.raises(ReloadRefused) as caught:
        asyncio.run(r.reload("m:2"))
    assert "sha256" in str(caught.value) and pipe.served.tag == "m:1"
    assert ModelControl(tmp_path).desired().generation == 0  # type: ignore[union-attr]
    response = to_response(caught.value, "m:1")
    assert response.status_code == 422 and b'"field":"tag"' in response.body
    with pytest.raises(UnknownModel):
        asyncio.run(r.reload("m:9"))
    (status,) = r.control.workers()
    assert status.bento_model_tag == "m:1" and "m:2 refused" in (status.error or "")


def test_the_watch_takes_up_a_new_import_once_and_respects_a_rollback(
    tmp_path: Path, two: tuple[ModelRuntime, ModelRuntime]
) -> None:
    a, b = two
    store = FakeStore({"m:1": a})
    r, pipe = reloader(tmp_path, store, "m:1", watch_s=1.0)

    async def scenario() -> None:
        await r.watch()
        assert pipe.served.tag == "m:1" and store.loads == ["m:1"]  # nothing new
        store.runtimes["m:2"], store.latest = b, "m:2"  # a new import
        await r.watch()
        assert pipe.served.tag == "m:2"
        await r.reload("m:1")  # the operator rolls back
        await r.watch()
        await r.watch()
        assert pipe.served.tag == "m:1"  # not undone: m:2 is not a new import any more

    asyncio.run(scenario())


# --- the operator's token ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token", "status"),
    [
        (None, None, 403),
        ("Bearer abcdefghijklmnop", None, 403),
        (None, "abcdefghijklmnop", 401),
        ("Basic abcdefghijklmnop", "abcdefghijklmnop", 401),
        ("Bearer ", "abcdefghijklmnop", 401),
        ("Bearer abcdefghijklmnoq", "abcdefghijklmnop", 403),
        ("Bearer abcdefghijklmno", "abcdefghijklmnop", 403),
        ("Bearer abcdefghijklmnop\udcff", "abcdefghijklmnop", 403),
    ],
)
def test_only_the_admin_token_may_reload(
    header: str | None, token: str | None, status: int
) -> None:
    with pytest.raises(AdminRefused) as caught:
        authorize(header, SecretStr(token) if token else None)
    response = to_response(caught.value, "m:1")
    assert response.status_code == status
    assert (response.headers.get("www-authenticate") == "Bearer") == (status == 401)
    if token is None:
        assert b"disabled" in response.body


def test_the_admin_token_passes() -> None:
    authorize("Bearer abcdefghijklmnop", SecretStr("abcdefghijklmnop"))
    authorize("bearer   abcdefghijklmnop ", SecretStr("abcdefghijklmnop"))


def test_a_starting_worker_takes_up_the_recorded_model_or_says_why_not(
    tmp_path: Path, two: tuple[ModelRuntime, ModelRuntime]
) -> None:
    a, b = two
    store = FakeStore({"m:1": a, "m:2": b})
    control = ModelControl(tmp_path)
    start = store.resolve("m:2")  # what `latest` resolves to when the worker starts
    assert initial_model(control, start, store.resolve, store.load)[0].tag == "m:2"
    control.initialize("m:2", "m:2")
    control.publish("m:1", "request")  # a rollback happened before this worker (re)started
    served_model, generation, error = initial_model(control, start, store.resolve, store.load)
    assert (served_model.tag, generation, error) == ("m:1", 1, None)
    store.broken.add("m:1")  # its bytes changed since: the start model, and the reason
    served_model, generation, error = initial_model(control, start, store.resolve, store.load)
    assert served_model.tag == "m:2" and "m:1 refused" in (error or "")


# --- one reload at a time, and tags checked before the store ------------------------------------


def _hold_reload_lock(folder: str, held: Any, release: Any) -> None:
    lock = ModelControl(Path(folder)).try_lock_reload()
    assert lock is not None
    held.set()
    release.wait(30)
    lock.release()


def test_the_reload_lock_excludes_other_processes_and_other_holders(tmp_path: Path) -> None:
    control = ModelControl(tmp_path)
    first = control.try_lock_reload()
    assert first is not None
    assert control.try_lock_reload() is None  # another holder in this process
    first.release()
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_reload_lock, args=(str(tmp_path), held, release))
    other.start()
    try:
        assert held.wait(30)
        assert control.try_lock_reload() is None  # another worker is reloading
    finally:
        release.set()
        other.join(30)
    again = control.try_lock_reload()
    assert again is not None
    again.release()


def test_a_reload_waits_for_the_one_in_progress_then_answers_409(
    tmp_path: Path, two: tuple[ModelRuntime, ModelRuntime]
) -> None:
    a, b = two
    store = FakeStore({"m:1": a, "m:2": b})
    r, pipe = reloader(tmp_path, store, "m:1")
    busy = r.control.try_lock_reload()  # another worker's reload, never finishing
    assert busy is not None
    with pytest.raises(ReloadConflict) as caught:
        asyncio.run(r.reload("m:2"))
    busy.release()
    assert pipe.served.tag == "m:1" and store.loads == ["m:1"]  # nothing loaded, nothing swapped
    assert r.control.desired().generation == 0  # type: ignore[union-attr]
    response = to_response(caught.value, "m:1")
    assert response.status_code == 409 and b'"field":"tag"' in response.body

    async def released_while_waiting() -> str:
        held = r.control.try_lock_reload()
        assert held is not None
        asyncio.get_running_loop().call_later(0.3, held.release)
        return (await r.reload("m:2")).served.tag

    assert asyncio.run(released_while_waiting()) == "m:2"


class Overtaking(ModelControl):
    """A shared folder where another writer publishes while a reload converges."""

    def __init__(self, folder: Path, tag: str) -> None:
        super().__init__(folder)
        self.tag, self.armed = tag, False

    def workers(self) -> list[WorkerStatus]:
        if self.armed:
            self.armed = False
            self.publish(self.tag, "elsewhere")
        return super().workers()


def test_a_reload_overtaken_before_it_answers_claims_nothing(
    tmp_path: Path, two: tuple[ModelRuntime, ModelRuntime]
) -> None:
    a, b = two
    store = FakeStore({"m:1": a, "m:2": b})
    r, _ = reloader(tmp_path, store, "m:1")
    r.control = control = Overtaking(tmp_path, "m:1")
    control.armed = True
    with pytest.raises(ReloadConflict):
        asyncio.run(r.reload("m:2"))
    outcome = asyncio.run(r.reload("m:2"))  # not overtaken: the tag asked for, agreed
    assert outcome.served.tag == "m:2" and outcome.workers_agree


def test_the_watch_does_not_wait_for_a_reload_in_progress(
    tmp_path: Path, two: tuple[ModelRuntime, ModelRuntime]
) -> None:
    a, b = two
    store = FakeStore({"m:1": a})
    r, pipe = reloader(tmp_path, store, "m:1", watch_s=1.0)
    store.runtimes["m:2"], store.latest = b, "m:2"  # a new import
    busy = r.control.try_lock_reload()
    assert busy is not None
    asyncio.run(r.watch())  # returns at once, claims nothing
    assert pipe.served.tag == "m:1"
    busy.release()
    asyncio.run(r.watch())  # the next look takes it up
    assert pipe.served.tag == "m:2"


@pytest.mark.parametrize(
    "tag",
    [
        "../../etc",
        "m:../x",
        "m:",
        ":v1",
        "",
        "a/b",
        "m:V1",
        "m:v1:v2",
        "m:-v1",
        "m:v1.",
        "m:" + "v" * 64,
        "m m:v1",
        "m:v1\x00",
        "m:v1\n",
    ],
)
def test_a_malformed_tag_is_400_before_the_store_is_touched(tag: str) -> None:
    with pytest.raises(UnknownModel) as caught:
        full_tag("m", tag)
    assert caught.value.status == 400
    response = to_response(caught.value, "m:1")
    assert response.status_code == 400 and b'"field":"tag"' in response.body
    assert b"lowercase letters" in response.body
    if len(tag) > 3:
        assert tag.encode() not in response.body  # the input is not echoed


def test_well_formed_tags_pass() -> None:
    assert full_tag("m", "m:" + "v" * 63) == "m:" + "v" * 63
    assert full_tag("m", "1.0_a-b") == "m:1.0_a-b"
    assert full_tag("m", "latest") == "m:latest"
