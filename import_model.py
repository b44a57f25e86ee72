"""Import a model version from the MLflow registry into the BentoML model store, validated.

    python import_model.py [--tracking-uri URI] [--name NAME]
                           [--stage STAGE | --alias ALIAS | --version N] [--force] [--json]
                           [--reload-url http://host:3000]

Resolves the version (stage through a registry search, alias through the alias API, or an
explicit version), downloads the whole artifact folder (external-data weights included),
validates it against docs/api.md §8 (`utils.model.contract`) and only then registers it with
`bentoml.models.create`, which commits atomically: any failure leaves the store as it was.
Re-importing the same MLflow version with the same sha256 stores nothing and prints the
existing tag. The tag is the last line of standard output (or use `--json`).

`--reload-url` makes it one step from registry to served: after the import it asks the running
service (`POST /model/reload` with `Authorization: Bearer $ADMIN_TOKEN`) to serve the imported
tag, and reports what every worker serves.

Exit codes: 0 ok, 2 bad arguments, 3 registry unreachable, 4 model/stage/alias/version not
found, 5 contract violation, 6 corrupt or unreadable model, 7 BentoML store error, 8 imported
but the service did not take it up (refused, unreachable, or its workers disagree).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

from utils.config import Settings, get_settings  # noqa: E402
from utils.model.contract import (  # noqa: E402
    ContractViolation,
    CorruptModelError,
    ModelContract,
    validate_model_folder,
)
from utils.model.metadata import ModelMetadata  # noqa: E402
from utils.model.registry import (  # noqa: E402
    ModelNotFound,
    RegistryUnreachable,
    ResolvedVersion,
    configure_fast_failure,
    download,
    probe,
    redact_uri,
    resolve,
    run_metrics,
)

log = logging.getLogger("import_model")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_CONTRACT = 5
EXIT_CORRUPT = 6
EXIT_STORE = 7
EXIT_RELOAD = 8


class StoreError(Exception):
    """The BentoML model store refused the model."""


@dataclass(frozen=True)
class ImportResult:
    tag: str
    created: bool
    registered_name: str
    mlflow_version: str
    stage: str | None
    alias: str | None
    sha256: str
    feature_spec_source: str
    warnings: list[str]


def _existing(bento_name: str, resolved: ResolvedVersion, sha256: str):  # noqa: ANN202
    """The newest stored model of this registered name, version and sha256, if any."""
    import bentoml

    try:
        stored = bentoml.models.list(bento_name)
    except bentoml.exceptions.NotFound:
        return None
    matches = [
        m
        for m in stored
        if m.info.labels.get("registered_name") == resolved.name
        and m.info.labels.get("mlflow_version") == resolved.version
        and m.info.metadata.get("sha256") == sha256
    ]
    return max(matches, key=lambda m: m.info.creation_time) if matches else None


def _labels(resolved: ResolvedVersion, contract: ModelContract) -> dict[str, str]:
    labels = {
        "registered_name": resolved.name,
        "mlflow_version": resolved.version,
        "sha256": contract.sha256[:12],
        "feature_spec": contract.feature_spec_source,
    }
    if resolved.stage:
        labels["mlflow_stage"] = resolved.stage
    if resolved.alias:
        labels["mlflow_alias"] = resolved.alias
    if resolved.run_id:
        labels["mlflow_run_id"] = resolved.run_id
    return labels


def _metadata(uri: str, resolved: ResolvedVersion, contract: ModelContract) -> dict[str, object]:
    return ModelMetadata(
        registered_name=resolved.name,
        mlflow_version=resolved.version,
        mlflow_stage=resolved.stage or "",
        mlflow_alias=resolved.alias or "",
        mlflow_run_id=resolved.run_id or "",
        source_model_uri=resolved.model_uri,
        source_artifact_uri=redact_uri(resolved.source),
        registry=redact_uri(uri),
        sha256=contract.sha256,
        imported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        feature_spec=json.loads(contract.feature_spec.to_json()),
        feature_spec_source=contract.feature_spec_source,
        input_shape=[str(d) for d in contract.input_shape],
        uncertainty_width=contract.uncertainty_width,
        has_confidence=contract.has_confidence,
        metrics=run_metrics(uri, resolved.run_id),
        warnings=list(contract.warnings),
    ).for_store()


def import_model(
    settings: Settings,
    *,
    tracking_uri: str | None = None,
    name: str | None = None,
    stage: str | None = None,
    alias: str | None = None,
    version: str | None = None,
    force: bool = False,
) -> ImportResult:
    """Resolve, download, validate, store. Raises the typed errors `main` maps to exit codes."""
    uri = tracking_uri or settings.tracking_uri
    name = name or settings.model_name
    if not (stage or alias or version):
        stage, alias, version = settings.model_stage, settings.model_alias, settings.model_version
    configure_fast_failure()
    probe(uri)
    resolved = resolve(uri, name, stage=stage, alias=alias, version=version)
    with tempfile.TemporaryDirectory(prefix="import-model-") as tmp:
        try:
            folder = download(uri, resolved, Path(tmp) / "model")
        except Exception as exc:  # mlflow raises many kinds when artifacts are missing
            raise CorruptModelError(
                f"cannot download the artifacts of {resolved.model_uri}: "
                f"{str(exc).splitlines()[0][:200]}"
            ) from exc
        contract = validate_model_folder(folder, full_check=True)
        import bentoml

        # what the store raises when it refuses: a folder it cannot create or write, a file
        # where its `models` folder should be, a name that is not a valid tag
        refused = (OSError, ValueError, bentoml.exceptions.BentoMLException)
        try:
            existing = _existing(settings.bento_model_name, resolved, contract.sha256)
        except refused as exc:
            raise StoreError(f"BentoML model store: {str(exc).splitlines()[0][:300]}") from exc
        if existing is not None and not force:
            log.info(
                "%s version %s (sha256 %s) is already stored as %s",
                name,
                resolved.version,
                contract.sha256[:12],
                existing.tag,
            )
            return _result(str(existing.tag), False, resolved, contract)
        model = None
        try:
            with bentoml.models.create(
                settings.bento_model_name,
                labels=_labels(resolved, contract),
                metadata=_metadata(uri, resolved, contract),
            ) as model:
                for item in folder.iterdir():
                    target = Path(model.path) / item.name
                    if item.is_dir():
                        shutil.copytree(item, target)
                    else:
                        shutil.copy2(item, target)
        except refused as exc:
            _discard(model)
            raise StoreError(f"BentoML model store: {str(exc).splitlines()[0][:300]}") from exc
    log.info("imported %s version %s as %s", name, resolved.version, model.tag)
    return _result(str(model.tag), True, resolved, contract)


def _discard(model: object) -> None:
    """Take out of the store what a failed `bentoml.models.create` left there. BentoML removes
    a version whose files failed to go in, but not one whose files are in when writing the
    model's `latest` pointer fails: the import failed, so the store keeps nothing of it."""
    if model is None:
        return
    import bentoml

    tag = model.tag  # type: ignore[attr-defined]
    try:
        stored = bentoml.models.get(tag)
    except Exception:  # not in the store (the usual case): nothing to take out
        return
    if stored.tag == tag:  # `get` also matches a version by prefix: only this one
        shutil.rmtree(stored.path, ignore_errors=True)


def _result(
    tag: str, created: bool, resolved: ResolvedVersion, contract: ModelContract
) -> ImportResult:
    return ImportResult(
        tag=tag,
        created=created,
        registered_name=resolved.name,
        mlflow_version=resolved.version,
        stage=resolved.stage,
        alias=resolved.alias,
        sha256=contract.sha256,
        feature_spec_source=contract.feature_spec_source,
        warnings=list(contract.warnings),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="import_model.py",
        description="Import a model version from the MLflow registry into the BentoML model "
        "store, after validating it against the model contract.",
        epilog="Exit codes: 0 ok, 2 bad arguments, 3 registry unreachable, 4 not found, "
        "5 contract violation, 6 corrupt or unreadable model, 7 BentoML store error, "
        "8 imported but not taken up by the service at --reload-url.",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow registry (default: MLFLOW_TRACKING_URI, else the embedded local registry)",
    )
    parser.add_argument(
        "--name", help="registered model name (default: MODEL_NAME, localization_model)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stage", help="registry stage (default: MODEL_STAGE, Production)")
    which.add_argument("--alias", help="registry alias, e.g. production")
    which.add_argument("--version", help="explicit registry version")
    parser.add_argument(
        "--force",
        action="store_true",
        help="store a new revision even if this version is already imported",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--reload-url",
        metavar="URL",
        help="after the import, have the service at URL serve it (POST /model/reload with "
        "ADMIN_TOKEN)",
    )
    return parser


def reload_service(url: str, tag: str, settings: Settings) -> tuple[str | None, dict[str, object]]:
    """Ask the service to serve `tag`: (None once every worker serves `tag`, else why not;
    the service's answer). A 200 alone is not enough: the answer must name `tag`, and so must
    every worker's report (a service overtaken by another reload answers 409)."""
    import httpx  # only this option needs an HTTP client

    assert settings.admin_token is not None
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/model/reload",
            json={"tag": tag},
            headers={"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"},
            timeout=settings.reload_wait_s + 30.0,
        )
        answer = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return f"{url}: {exc}", {"error": f"{url}: {exc}"}
    if not isinstance(answer, dict):
        return f"{url} answered {response.status_code} with no JSON object", {}
    if response.status_code != 200:
        return f"{url} answered {response.status_code}: {answer.get('error')}", answer
    served = answer.get("bento_model_tag")
    workers = answer.get("workers") if isinstance(answer.get("workers"), list) else []
    others = sorted({str(w.get("bento_model_tag")) for w in workers if isinstance(w, dict)} - {tag})
    if served != tag:
        return f"{url} serves {served}, not {tag}", answer
    if others or not workers or answer.get("workers_agree") is not True:
        also = ", ".join(others) or "(workers did not all report)"
        return f"{url} serves {tag} on some workers only; others: {also}", answer
    return None, answer


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("alembic", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow draws its own download bars (tqdm) for a model's files and for large weights
    # fetched from a tracking server; only where someone watches, never into a log file
    os.environ.setdefault(
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if sys.stderr.isatty() else "false"
    )
    settings = get_settings()
    if args.reload_url and settings.admin_token is None:
        return _fail(EXIT_USAGE, "--reload-url needs ADMIN_TOKEN (the service's token)")
    try:
        result = import_model(
            settings,
            tracking_uri=args.tracking_uri,
            name=args.name,
            stage=args.stage,
            alias=args.alias,
            version=args.version,
            force=args.force,
        )
    except RegistryUnreachable as exc:
        return _fail(EXIT_UNREACHABLE, f"registry unreachable: {exc}")
    except ModelNotFound as exc:
        return _fail(EXIT_NOT_FOUND, f"not found: {exc}")
    except ContractViolation as exc:
        return _fail(EXIT_CONTRACT, f"contract violation: {exc}")
    except CorruptModelError as exc:
        return _fail(EXIT_CORRUPT, f"corrupt or unreadable model: {exc}")
    except StoreError as exc:
        return _fail(EXIT_STORE, f"store error: {exc}")
    reloaded: dict[str, object] | None = None
    code = EXIT_OK
    if args.reload_url:
        problem, reloaded = reload_service(args.reload_url, result.tag, settings)
        if problem is None:
            log.info(
                "%s: every worker serves %s (%s)",
                args.reload_url,
                reloaded["bento_model_tag"],
                reloaded["model_version"],
            )
        else:
            code = _fail(EXIT_RELOAD, f"imported {result.tag}, but not served: {problem}")
    if args.json:
        extra = {"reload": reloaded} if args.reload_url else {}
        print(json.dumps({**asdict(result), **extra}, sort_keys=True))
    else:
        state = "imported" if result.created else "already imported"
        print(
            f"{state}: {result.registered_name} version {result.mlflow_version} "
            f"(sha256 {result.sha256[:12]})"
        )
        print(result.tag)
    return code


def _fail(code: int, message: str) -> int:
    print(f"import_model: error: {message.splitlines()[0]}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
