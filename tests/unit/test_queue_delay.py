"""Greedy's `auto` queue delay: measured per model at load (`utils/model/batch_profile.py`),
decided by `utils/serving/queue_delay.py`, and followed by the pipeline across reloads."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.support.model_factory import toy_model
from utils.api.pipeline import Pipeline
from utils.config import Settings
from utils.model import batch_profile
from utils.model.batch_profile import BatchProfile
from utils.model.runtime import ModelRuntime
from utils.model.served import ServedModel, StoredModel
from utils.serving.batching import Greedy
from utils.serving.queue_delay import MAX_AUTO_S, auto_queue_delay_s, queue_delay_s


class Costly:
    """A model whose inference of n captures sleeps `fixed + per_item * n` seconds."""

    def __init__(self, fixed: float, per_item: float) -> None:
        self.fixed, self.per_item, self.sizes = fixed, per_item, []

    def predict(self, captures: list[np.ndarray], validated: bool = False) -> None:
        self.sizes.append(len(captures))
        time.sleep(self.fixed + self.per_item * len(captures))


CAPTURES = [np.zeros((3, 10), np.complex64)] * 2


def test_a_model_with_a_fixed_cost_per_call_gains_from_batching() -> None:
    model = Costly(fixed=0.004, per_item=0.0005)  # batch 8: 8 ms for 8, against 4.5 ms for 1
    profile = batch_profile.measure(model, CAPTURES, batch=8, repeats=3)
    assert sorted(set(model.sizes)) == [1, 8]
    assert profile.batch == 8 and profile.gain > 3  # 4.5 ms vs 1 ms per sample
    delay = auto_queue_delay_s(profile)
    assert delay == pytest.approx(0.5 * profile.single_s)


def test_a_model_whose_cost_is_per_sample_waits_for_nobody() -> None:
    profile = batch_profile.measure(Costly(fixed=0.0, per_item=0.002), CAPTURES, batch=8)
    assert profile.gain < 1.25
    assert auto_queue_delay_s(profile) == 0.0


def test_the_rule_its_cap_and_the_operators_override() -> None:
    assert auto_queue_delay_s(BatchProfile(single_s=0.006, batch=8, batch_s=0.030)) == 0.003
    assert auto_queue_delay_s(BatchProfile(single_s=0.010, batch=8, batch_s=0.070)) == 0.0
    slow = BatchProfile(single_s=0.200, batch=8, batch_s=0.400)
    assert auto_queue_delay_s(slow) == MAX_AUTO_S  # a 200 ms model: at most 10 ms
    assert queue_delay_s(2.5, slow) == 0.0025  # a figure from the operator wins
    assert queue_delay_s(0.0, slow) == 0.0
    assert queue_delay_s("auto", None) == 0.0  # not measured (another dispatch mode)


def _served(folder: Path, model: onnx.ModelProto, profile: BatchProfile | None) -> ServedModel:
    onnx.save(model, folder / "model.onnx")
    runtime = ModelRuntime(
        folder, {}, intra_threads=1, inter_threads=1, providers=["CPUExecutionProvider"]
    )
    stored = StoredModel("toy:1", "toy", "1", folder, {}, "2026-01-01T00:00:00")
    return ServedModel(runtime, stored, "1+x", "t", batch_profile=profile)


def test_the_batcher_takes_the_served_models_delay_and_follows_a_reload(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    flat = _served(tmp_path / "a", toy_model(), BatchProfile(0.001, 8, 0.008))
    backbone = _served(tmp_path / "b", toy_model(), BatchProfile(0.006, 8, 0.030))
    assert Settings(_env_file=None).batch_queue_delay_ms == 0.0  # the default: never wait
    settings = Settings(_env_file=None, batch_queue_delay_ms="auto")
    assert settings.batch_dispatch == "greedy"
    pipeline = Pipeline.build(flat, settings, infer_api=None)  # type: ignore[arg-type]
    assert isinstance(pipeline.batcher, Greedy)
    assert pipeline.batcher.queue_delay_s == 0.0
    pipeline.swap(backbone)
    assert pipeline.batcher.queue_delay_s == 0.003
    pipeline.swap(flat)  # a rollback brings its own
    assert pipeline.batcher.queue_delay_s == 0.0
    fixed = Pipeline.build(
        backbone,
        Settings(_env_file=None, batch_queue_delay_ms=1.5),
        infer_api=None,  # type: ignore[arg-type]
    )
    assert fixed.batcher.queue_delay_s == 0.0015  # type: ignore[union-attr]
    fixed.swap(flat)
    assert fixed.batcher.queue_delay_s == 0.0015  # type: ignore[union-attr]


def test_the_load_path_measures_the_profile_only_where_it_is_used(tmp_path: Path) -> None:
    """`load_served` on a real toy model: greedy + an `auto` (the queue delay's or
    BATCH_ON_LOOP's) measures; explicit settings for both do not."""
    from utils.model.served import load_served

    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(toy_model(), folder / "model.onnx")
    stored = StoredModel("toy:1", "toy", "1", folder, {}, "t")
    auto = load_served(stored, Settings(_env_file=None, batch_queue_delay_ms="auto"), 1, "t")
    assert auto.batch_profile is not None and auto.batch_profile.batch == 8
    assert auto.batch_profile.single_s > 0
    on_loop = load_served(stored, Settings(_env_file=None, batch_queue_delay_ms=0), 1, "t")
    assert on_loop.batch_profile is not None  # BATCH_ON_LOOP=auto (the default) needs it
    fixed = Settings(_env_file=None, batch_queue_delay_ms=0, batch_on_loop=False)
    assert load_served(stored, fixed, 1, "t").batch_profile is None
