"""The `/model/info` answer: where the served model came from, what it expects, how it does."""

from __future__ import annotations

import dataclasses

from utils.api.schemas import ModelInfo
from utils.model.runtime import ModelRuntime
from utils.serving import metrics


def describe(
    runtime: ModelRuntime,
    *,
    tag: str,
    tag_name: str,
    tag_version: str,
    created_at: str,
    loaded_at: str,
) -> ModelInfo:
    meta = runtime.metadata
    training = meta.metrics
    count, avg_ms, hit_rate = metrics.service_stats()
    return ModelInfo(
        name=meta.registered_name or tag_name,
        version=meta.mlflow_version or tag_version,
        stage=meta.stage_or_alias(),  # docs/api.md §2: "stage (or alias)"
        alias=meta.mlflow_alias or None,
        mlflow_run_id=meta.mlflow_run_id or None,
        bento_model_tag=tag,
        created_at=created_at,
        sha256=runtime.sha256,
        feature_spec=runtime.spec.model_dump(mode="json"),
        feature_spec_source=runtime.spec_source,
        accuracy_meters=training.get("accuracy_meters"),
        training_samples=int(training["training_samples"])
        if "training_samples" in training
        else None,
        last_reloaded=loaded_at,
        inference_count=count,
        avg_latency_ms=avg_ms,
        cache_hit_rate=hit_rate,
        warnings=list(runtime.warnings),
        fix_envelope=dataclasses.asdict(runtime.envelope),
    )
