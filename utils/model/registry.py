"""MLflow registry access for the import step: reach, resolve, download (never used to serve).

Failing fast matters: MLflow's HTTP client retries with exponential backoff for minutes by
default, so the registry is probed first with a short timeout and MLflow's own retries are cut
down (`configure_fast_failure`).  URIs are redacted before they appear in any message.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

PROBE_TIMEOUT_S = 3.0


class RegistryUnreachable(Exception):
    """The registry does not answer (or an embedded registry does not exist)."""


class ModelNotFound(Exception):
    """No such registered model, stage, alias or version."""


@dataclass(frozen=True)
class ResolvedVersion:
    name: str
    version: str
    stage: str | None
    alias: str | None
    run_id: str | None
    source: str
    download_uri: str

    @property
    def model_uri(self) -> str:
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        if self.stage:
            return f"models:/{self.name}/{self.stage}"
        return f"models:/{self.name}/{self.version}"


def redact_uri(uri: str) -> str:
    """Drop credentials from a URI (`http://user:secret@host` -> `http://***@host`)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
    return uri


def configure_fast_failure(timeout_s: float = 10.0, retries: int = 1) -> None:
    """Bound MLflow's HTTP client (unless the user set these variables themselves)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))


def probe(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise `RegistryUnreachable` unless the registry answers within `timeout_s`."""
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        parts = urlsplit(uri)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
        request = urllib.request.Request(health)
        if parts.username or parts.password:  # urllib does not take credentials from the URL
            token = base64.b64encode(
                f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
            ).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                if response.status >= 500:
                    raise RegistryUnreachable(
                        f"registry {redact_uri(uri)} answers HTTP {response.status}"
                    )
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise RegistryUnreachable(
                    f"registry {redact_uri(uri)} answers HTTP {exc.code}"
                ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryUnreachable(
                f"registry {redact_uri(uri)} is unreachable: {reason}"
            ) from exc
    elif scheme == "sqlite":
        path = Path(uri.split("sqlite:///", 1)[-1]) if uri.startswith("sqlite:///") else None
        if path is not None and not path.is_file():
            raise RegistryUnreachable(
                f"registry database {path} does not exist (bootstrap the demo model with "
                "`make bootstrap`, or set MLFLOW_TRACKING_URI)"
            )


def _client(uri: str):  # noqa: ANN202 - mlflow is imported lazily (not in the serving image)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def resolve(
    uri: str,
    name: str,
    *,
    stage: str | None = None,
    alias: str | None = None,
    version: str | None = None,
) -> ResolvedVersion:
    """Find the version a stage, alias or explicit version designates."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if _is_not_found(exc):
            raise ModelNotFound(f"registered model '{name}' not found") from exc
        raise RegistryUnreachable(f"registry error: {_first_line(exc)}") from exc
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version:
            mv = client.get_model_version(name, str(version))
        else:
            wanted = stage or "Production"
            staged = [
                v
                for v in client.search_model_versions(f"name='{name}'")
                if (v.current_stage or "").lower() == wanted.lower()
            ]
            if not staged:
                raise ModelNotFound(f"model '{name}' has no version in stage '{wanted}'")
            mv = max(staged, key=lambda v: int(v.version))
    except MlflowException as exc:
        if _is_not_found(exc):
            what = f"alias '{alias}'" if alias else f"version '{version}'"
            raise ModelNotFound(f"model '{name}' has no {what}") from exc
        raise RegistryUnreachable(f"registry error: {_first_line(exc)}") from exc
    return ResolvedVersion(
        name=name,
        version=str(mv.version),
        stage=None if (alias or version) else (stage or "Production"),
        alias=alias,
        run_id=mv.run_id or None,
        source=mv.source,
        download_uri=client.get_model_version_download_uri(name, str(mv.version)),
    )


def download(uri: str, resolved: ResolvedVersion, destination: Path) -> Path:
    """Download the version's whole artifact folder (external-data files included)."""
    import mlflow

    destination.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=resolved.download_uri, dst_path=str(destination), tracking_uri=uri
    )
    return Path(local)


def run_metrics(uri: str, run_id: str | None) -> dict[str, float]:
    """Training metrics of the run that produced the version (empty when there is none)."""
    if not run_id:
        return {}
    from mlflow.exceptions import MlflowException

    try:
        return {k: float(v) for k, v in _client(uri).get_run(run_id).data.metrics.items()}
    except MlflowException:
        return {}


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "") or ""
    return (
        "RESOURCE_DOES_NOT_EXIST" in code or "NOT_FOUND" in code or "not found" in str(exc).lower()
    )


def _first_line(exc: Exception) -> str:
    return redact_uri(str(exc).splitlines()[0][:300]) if str(exc) else type(exc).__name__
