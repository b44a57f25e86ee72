"""The `/model/info` answer: where the served model came from, what it expects, how it does."""

from __future__ import annotations

import dataclasses

from utils.api.schemas import ModelInfo, RuntimeInfo, WorkerModel
from utils.model.served import ServedModel
from utils.serving import metrics
from utils.serving.model_control import WorkerStatus


def worker_models(workers: list[WorkerStatus]) -> list[WorkerModel]:
    return [WorkerModel.model_validate(w.model_dump(exclude={"generation"})) for w in workers]


def describe(served: ServedModel, workers: list[WorkerStatus], workers_agree: bool) -> ModelInfo:
    """The answering worker's model, and what every worker serves (after a reload they may
    briefly differ: `workers_agree`)."""
    runtime, stored = served.runtime, served.stored
    meta = runtime.metadata
    training = meta.metrics
    count, avg_ms, hit_rate = metrics.service_stats()
    return ModelInfo(
        name=meta.registered_name or stored.name,
        version=meta.mlflow_version or stored.version,
        stage=meta.stage_or_alias(),  # docs/api.md §2: "stage (or alias)"
        alias=meta.mlflow_alias or None,
        mlflow_run_id=meta.mlflow_run_id or None,
        bento_model_tag=stored.tag,
        created_at=stored.created_at,
        sha256=runtime.sha256,
        feature_spec=runtime.spec.model_dump(mode="json"),
        feature_spec_source=runtime.spec_source,
        accuracy_meters=training.get("accuracy_meters"),
        training_samples=int(training["training_samples"])
        if "training_samples" in training
        else None,
        model_version=served.model_version,
        last_reloaded=served.loaded_at,
        workers=worker_models(workers),
        workers_agree=workers_agree,
        inference_count=count,
        avg_latency_ms=avg_ms,
        cache_hit_rate=hit_rate,
        warnings=list(runtime.warnings),
        runtime=RuntimeInfo(
            providers=list(runtime.providers),
            intra_op_threads=runtime.intra_op_threads,
            inter_op_threads=runtime.inter_op_threads,
        ),
        fix_envelope=dataclasses.asdict(runtime.envelope),
    )
