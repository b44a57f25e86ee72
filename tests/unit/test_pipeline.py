"""The request pipeline without a server: decode → cache → dispatch → fill, on a toy ONNX model,
the in-process LRU cache and a dispatch that records what reaches the model."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests.support.model_factory import toy_model
from utils.api.decoding import encode_capture
from utils.api.errors import BrokenModel, InvalidField, to_response
from utils.api.pipeline import Pipeline, batcher_dispatch, infer_batch, infer_jobs
from utils.api.schemas import PredictBatchRequest, PredictRequest
from utils.dsp.synthetic import generate_scenes
from utils.model.runtime import ModelRuntime
from utils.model.served import ServedModel, StoredModel
from utils.serving.batching import Greedy
from utils.serving.cache import LRUCache
from utils.serving.departure import ClientLeft, Departure


def runtime_for(folder: Path, model: onnx.ModelProto) -> ModelRuntime:
    onnx.save(model, folder / "model.onnx")
    return ModelRuntime(
        folder, {}, intra_threads=1, inter_threads=1, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> ModelRuntime:
    return runtime_for(tmp_path_factory.mktemp("toy"), toy_model())


@pytest.fixture(scope="module")
def scenes(runtime: ModelRuntime) -> list[np.ndarray]:
    return list(generate_scenes(3, seed=11, spec=runtime.spec).iq)


def served(runtime: ModelRuntime, version: str = "1") -> ServedModel:
    stored = StoredModel(f"toy:{version}", "toy", version, Path("."), {}, "2026-01-01T00:00:00")
    return ServedModel(runtime, stored, runtime.version_label(version), "2026-01-01T00:00:00")


class Recorder:
    """A dispatch that runs the real batched inference and records each call's size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def __call__(
        self,
        model: ServedModel,
        captures: list[np.ndarray],
        _verbatim: str | None,
        _departure: Departure | None = None,
    ) -> list[dict[str, Any]]:
        self.calls.append(len(captures))
        return infer_batch(model.runtime, captures)


def pipeline(runtime: ModelRuntime, max_batch_items: int = 10) -> tuple[Pipeline, Recorder]:
    recorder = Recorder()
    return Pipeline(
        served(runtime),
        LRUCache(100, 60),
        recorder,
        cache_prefix="t",
        max_samples=65_536,
        max_batch_items=max_batch_items,
    ), recorder


def one(capture: np.ndarray, **extra: Any) -> PredictRequest:
    return PredictRequest(iq_b64=encode_capture(capture), cache_enabled=True, **extra)


def test_a_fix_is_cached_and_served_from_the_cache(
    runtime: ModelRuntime, scenes: list[np.ndarray]
) -> None:
    pipe, recorder = pipeline(runtime)

    async def scenario() -> None:
        first = await pipe.predict_one(one(scenes[0]), 0.0)
        again = await pipe.predict_one(one(scenes[0], session_id="s-2"), 0.0)
        assert first.quality == "fix" and not first.cache_hit
        assert again.cache_hit and again.session_id == "s-2"
        assert again.position == first.position
        assert recorder.calls == [1]  # the second answer never reached the model

    asyncio.run(scenario())


def test_a_batch_dispatches_only_its_misses_and_keeps_request_order(
    runtime: ModelRuntime, scenes: list[np.ndarray]
) -> None:
    pipe, recorder = pipeline(runtime)

    async def scenario() -> None:
        warm = await pipe.predict_one(one(scenes[1]), 0.0)
        batch = PredictBatchRequest(
            iq_b64_samples=[encode_capture(s) for s in scenes], cache_enabled=True
        )
        answers = await pipe.predict_many(batch, 0.0)
        assert [a.cache_hit for a in answers] == [False, True, False]
        assert answers[1].position == warm.position
        assert recorder.calls == [1, 2]

    asyncio.run(scenario())


def test_silence_is_answered_as_no_fix_and_never_cached(
    runtime: ModelRuntime, scenes: list[np.ndarray]
) -> None:
    pipe, recorder = pipeline(runtime)
    silence = np.zeros_like(scenes[0])

    async def scenario() -> None:
        for _ in range(2):
            answer = await pipe.predict_one(one(silence), 0.0)
            assert answer.quality == "no_fix" and not answer.cache_hit and answer.warnings
        assert recorder.calls == [1, 1]

    asyncio.run(scenario())


def test_too_many_items_is_a_413_naming_the_field(
    runtime: ModelRuntime, scenes: list[np.ndarray]
) -> None:
    pipe, recorder = pipeline(runtime, max_batch_items=2)
    batch = PredictBatchRequest(iq_b64_samples=[encode_capture(s) for s in scenes])
    with pytest.raises(InvalidField) as caught:
        asyncio.run(pipe.predict_many(batch, 0.0))
    assert caught.value.field == "iq_b64_samples" and caught.value.status == 413
    response = to_response(caught.value, "toy:1")
    assert response.status_code == 413 and b'"field":"iq_b64_samples"' in response.body
    assert recorder.calls == []


def test_a_bad_item_is_named_with_its_index(
    runtime: ModelRuntime, scenes: list[np.ndarray]
) -> None:
    pipe, recorder = pipeline(runtime)
    batch = PredictBatchRequest(iq_b64_samples=[encode_capture(scenes[0]), "not base64!"])
    with pytest.raises(InvalidField) as caught:
        asyncio.run(pipe.predict_many(batch, 0.0))
    assert caught.value.field == "iq_b64_samples[1]"
    assert str(caught.value).startswith("iq_b64_samples[1]: ")
    assert recorder.calls == []


def test_a_broken_model_is_blamed_on_the_model_and_names_the_sample(
    tmp_path: Path, scenes: list[np.ndarray]
) -> None:
    broken = runtime_for(tmp_path, toy_model(nan_below_level=-170))
    pipe, _ = pipeline(broken)
    batch = PredictBatchRequest(
        iq_b64_samples=[encode_capture(scenes[0]), encode_capture(np.zeros_like(scenes[0]))]
    )
    with pytest.raises(BrokenModel) as caught:
        asyncio.run(pipe.predict_many(batch, 0.0))
    assert caught.value.field == "iq_b64_samples[1]"
    response = to_response(caught.value, "toy:1")
    assert response.status_code == 500
    assert b"model toy:1 returned invalid outputs" in response.body


def test_a_request_whose_client_left_is_not_dispatched(
    runtime: ModelRuntime, scenes: list[np.ndarray]
) -> None:
    pipe, recorder = pipeline(runtime)
    departure = Departure()
    departure.gone = True  # seen by the connection's watcher before the request reached dispatch
    with pytest.raises(ClientLeft):
        asyncio.run(pipe.predict_one(one(scenes[0]), 0.0, departure=departure))
    assert recorder.calls == [] and departure.skipped
    assert to_response(ClientLeft(), "toy:1").status_code == 499  # dropped by ClientGone


def test_a_request_arriving_to_a_busy_batcher_is_watched_from_its_start(
    runtime: ModelRuntime, scenes: list[np.ndarray]
) -> None:
    release = threading.Event()
    sizes: list[int] = []

    def held(jobs: list[Any]) -> list[dict[str, Any]]:
        release.wait(30)
        sizes.append(len(jobs))
        return infer_jobs(jobs)

    batcher = Greedy(held, max_batch_size=8, wait_budget_s=60, queue_delay_s=0, observer=None)
    submitted: list[Departure | None] = []

    async def submit(job: Any, departure: Departure | None) -> Any:
        submitted.append(departure)
        return await batcher.submit(job, departure)

    pipe = Pipeline(
        served(runtime),
        LRUCache(100, 60),
        batcher_dispatch(submit),
        cache_prefix="t",
        max_samples=65_536,
        max_batch_items=10,
        batcher=batcher,
    )

    async def scenario() -> None:
        first = asyncio.create_task(pipe.predict_one(one(scenes[0]), 0.0))
        while not batcher.busy:
            await asyncio.sleep(0.001)
        alone = Departure(lambda: None)
        watched: list[bool] = []

        def leaves() -> None:  # the watcher at once sees the client gone
            watched.append(True)
            late.gone = True

        late = Departure(leaves)
        with pytest.raises(ClientLeft):
            await pipe.predict_one(one(scenes[1]), 0.0, departure=late)
        assert watched == [True] and late.skipped
        release.set()
        assert (await first).quality in {"fix", "no_fix"}
        await pipe.predict_one(one(scenes[2]), 0.0, departure=alone)
        assert not alone.skipped

    asyncio.run(scenario())
    assert sizes == [1, 1]  # the departed request's capture never reached the model
    assert len(submitted) == 2  # nor the batcher: seen gone before dispatch
