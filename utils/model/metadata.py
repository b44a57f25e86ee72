"""What `import_model.py` records about a model in the BentoML store, and the service reads back.

One typed record instead of string keys written in one place and read in three: a key renamed
here is renamed for both sides, and a store entry written by an older import still reads
(missing fields take their defaults, unknown ones are kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelMetadata(BaseModel):
    """The `metadata` of a BentoML model imported from the MLflow registry."""

    model_config = ConfigDict(extra="allow")

    registered_name: str = ""
    mlflow_version: str = ""
    mlflow_stage: str = ""
    mlflow_alias: str = ""
    mlflow_run_id: str = ""
    source_model_uri: str = ""
    source_artifact_uri: str = ""
    registry: str = ""
    sha256: str = ""
    imported_at: str = ""
    feature_spec: dict[str, Any] | None = None
    feature_spec_source: str = "defaults"
    input_shape: list[str] = Field(default_factory=list)
    uncertainty_width: int = 2
    has_confidence: bool = False
    metrics: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    @classmethod
    def read(cls, raw: Mapping[str, Any] | ModelMetadata) -> ModelMetadata:
        """From a store entry's `info.metadata` (or a `model.yaml`'s `metadata`)."""
        return raw if isinstance(raw, ModelMetadata) else cls.model_validate(dict(raw or {}))

    def for_store(self) -> dict[str, Any]:
        """The JSON-able dict BentoML stores."""
        return self.model_dump(mode="json")

    def stage_or_alias(self) -> str | None:
        """How the registry named the version when it was imported: its stage, else alias."""
        return self.mlflow_stage or self.mlflow_alias or None
