"""Put a genuinely trained demo model into an MLflow registry (the embedded one by default).

    python -m demo.bootstrap [--tracking-uri URI] [--force] [--scenes N] [--seed S]
                             [--only-embedded]

Idempotent: when the registered model already has a version in the Production stage (or under
the `production` alias) nothing is trained unless `--force` is given.  The model folder logged to
the run holds `MLmodel`, `model.onnx` (weights may sit in external-data files beside it) and
`feature_spec.json`; the version is registered from that folder, moved to Production and given
the alias `production`, so both registry idioms of MLflow 3 find it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.onnx
import onnx
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from utils.config import Settings, get_settings
from utils.dsp.feature_spec import FEATURE_SPEC_FILENAME, FeatureSpec

log = logging.getLogger("demo.bootstrap")

EXPERIMENT_NAME = "rf-localization-demo"
PRODUCTION_STAGE = "Production"
PRODUCTION_ALIAS = "production"
MODEL_ARTIFACT_PATH = "model"


@dataclass(frozen=True)
class BootstrapResult:
    name: str
    version: str
    created: bool
    run_id: str
    metrics: dict[str, float]


def production_version(client: MlflowClient, name: str) -> str | None:
    """The version under the `production` alias, else the newest one in the Production stage."""
    try:
        return str(client.get_model_version_by_alias(name, PRODUCTION_ALIAS).version)
    except MlflowException:
        pass
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    staged = [int(v.version) for v in versions if v.current_stage == PRODUCTION_STAGE]
    return str(max(staged)) if staged else None


def _signature(spec: FeatureSpec) -> ModelSignature:
    import numpy as np

    shape = (-1, spec.n_channels, spec.n_mels, spec.n_frames)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape, "mel_spectrogram")]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, 2), "positions"),
                TensorSpec(np.dtype(np.float32), (-1, 3), "uncertainties"),
            ]
        ),
    )


def _experiment_id(client: MlflowClient, settings: Settings, tracking_uri: str) -> str:
    existing = client.get_experiment_by_name(EXPERIMENT_NAME)
    if existing is not None:
        return str(existing.experiment_id)
    artifact_location = None
    if tracking_uri == settings.embedded_tracking_uri:
        settings.embedded_artifact_root.mkdir(parents=True, exist_ok=True)
        artifact_location = settings.embedded_artifact_root.as_uri()
    return str(client.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_location))


def register_onnx_model(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    onnx_model: onnx.ModelProto,
    spec: FeatureSpec | None,
    *,
    metrics: dict[str, float] | None = None,
    params: dict[str, str | int | float] | None = None,
    stage: str | None = PRODUCTION_STAGE,
    alias: str | None = PRODUCTION_ALIAS,
    external_data: bool = True,
) -> tuple[str, str]:
    """Log an ONNX model folder (with its feature spec) to a new run and register it.

    Returns (version, run_id).  Also used by the tests to put deliberately broken models into a
    registry through exactly the path real models take.
    """
    run = client.create_run(
        experiment_id,
        run_name="demo-model",
        tags={"model_kind": "rf-localization-demo", "framework": "onnx"},
    )
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
        )
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / MODEL_ARTIFACT_PATH
            mlflow.onnx.save_model(
                onnx_model,
                path=str(model_dir),
                signature=_signature(spec) if spec else None,
                metadata={"feature_spec": json.loads(spec.to_json())} if spec else None,
                pip_requirements=["onnxruntime", "numpy"],
                save_as_external_data=external_data,
            )
            if spec is not None:
                spec.save(model_dir / FEATURE_SPEC_FILENAME)
            client.log_artifacts(run_id, str(model_dir), artifact_path=MODEL_ARTIFACT_PATH)
        if spec is not None:
            client.log_text(run_id, spec.to_json(), FEATURE_SPEC_FILENAME)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="RF transmitter localization")
    tags = (
        {"accuracy_meters": f"{metrics['accuracy_meters']:.0f}"}
        if metrics and "accuracy_meters" in metrics
        else None
    )
    mv = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT_PATH}",
        run_id=run_id,
        tags=tags,
    )
    version = str(mv.version)
    if stage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages: deprecated, still supported
            client.transition_model_version_stage(
                name, version, stage, archive_existing_versions=True
            )
    if alias:
        client.set_registered_model_alias(name, alias, version)
    log.info("registered %s version %s (stage %s, alias %s)", name, version, stage, alias)
    return version, run_id


def bootstrap(
    settings: Settings | None = None,
    *,
    tracking_uri: str | None = None,
    force: bool = False,
    n_scenes: int | None = None,
    seed: int | None = None,
) -> BootstrapResult:
    """Train, log, register and promote the demo model unless Production already exists."""
    from demo.train import TrainConfig, train_demo_model

    settings = settings or get_settings()
    uri = tracking_uri or settings.tracking_uri
    if uri == settings.embedded_tracking_uri:
        settings.local_registry_dir.mkdir(parents=True, exist_ok=True)
    # A client of its own, never mlflow.set_tracking_uri: that would leak into os.environ.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = settings.model_name

    current = production_version(client, name)
    if current is not None and not force:
        mv = client.get_model_version(name, current)
        log.info(
            "%s version %s is already in production; nothing to do (use --force)", name, current
        )
        run = client.get_run(mv.run_id) if mv.run_id else None
        return BootstrapResult(
            name, current, False, mv.run_id or "", dict(run.data.metrics) if run else {}
        )

    defaults = TrainConfig()
    cfg = TrainConfig(
        n_scenes=n_scenes or defaults.n_scenes, seed=defaults.seed if seed is None else seed
    )
    trained = train_demo_model(cfg)
    version, run_id = register_onnx_model(
        client,
        _experiment_id(client, settings, uri),
        name,
        trained.onnx_model,
        trained.spec,
        metrics=trained.metrics,
        params=trained.params,
    )
    return BootstrapResult(name, version, True, run_id, trained.metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tracking-uri", help="registry to write to (default: configured or embedded)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="train and register a new version even if one is in production",
    )
    parser.add_argument("--scenes", type=int, default=None, help="number of synthetic scenes")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument(
        "--only-embedded",
        action="store_true",
        help="do nothing when MLFLOW_TRACKING_URI points at a registry of your "
        "own (used by `make serve`)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="also write the version's training metrics to this JSON file "
        "(the README's demo-model figures come from benchmarks/results/"
        "demo_model.json)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = get_settings()
    if args.only_embedded and not args.tracking_uri and not settings.uses_embedded_registry:
        print(
            "MLFLOW_TRACKING_URI is set: using that registry as it is, no demo model bootstrapped"
        )
        return 0
    result = bootstrap(
        tracking_uri=args.tracking_uri, force=args.force, n_scenes=args.scenes, seed=args.seed
    )
    summary = {
        "name": result.name,
        "version": result.version,
        "created": result.created,
        "run_id": result.run_id,
        "metrics": result.metrics,
    }
    print(json.dumps(summary, sort_keys=True))
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(
            json.dumps(
                {
                    **summary,
                    "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
                sort_keys=True,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
