"""README promises about importing a model and about the model then served, through the real path.

One embedded (SQLite) MLflow registry for the module holds toy models, each wrong or special in
one way; `import_model.py` runs as a real subprocess, configured the way the README says
(environment variables, not flags), into stores of its own. The runs that depend on no other
(stores that refuse, a model the contract refuses) start together in the background while one
shared store takes three imports in turn; two real `bentoml serve` processes (one worker each)
then serve that store over HTTP:

- the newest import, with BENTO_MODEL_TAG unset: a model taken by its alias, with a
  `confidence` output, 2-wide `uncertainties` and no feature spec;
- an older import named by BENTO_MODEL_TAG: a model taken by its stage, with a feature spec.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.support.model_factory import register_onnx_model, toy_model
from tests.support.registry import make_settings
from tests.support.serving import Server, run_import_model, start_server
from utils.api.decoding import encode_capture
from utils.config import PROJECT_ROOT
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

NAME = "localization_model"  # registered name and BentoML model name (both defaults)
CONFIDENCE = 0.8125  # exact in float32
SIGMAS_2_WIDE = (0.1, 0.2)  # degrees: latitude, longitude
STAGED_BIAS = (0.15, 0.25, 0.1)  # sigma lat, sigma lon, rho of the Staging version


@dataclass(frozen=True)
class Registry:
    folder: Path  # LOCAL_REGISTRY_DIR
    versions: dict[str, str]  # role -> registry version

    @property
    def env(self) -> dict[str, str]:
        return {"LOCAL_REGISTRY_DIR": str(self.folder)}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Five versions of `localization_model`, each reachable one way only:

    production: stage Production (what an import takes when told nothing);
    staged: stage Staging, with rho;
    champion: alias `champion` only; `confidence` output, 2-wide uncertainties, no spec;
    pinned: no stage, no alias (an explicit version only);
    bad_rho: no stage, no alias; its rho is 1.5, which the contract refuses.
    """
    settings = make_settings(tmp_path_factory.mktemp("promises-registry"))
    settings.embedded_artifact_root.mkdir(parents=True)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    experiment = str(
        client.create_experiment(
            "promises", artifact_location=settings.embedded_artifact_root.as_uri()
        )
    )
    spec = FeatureSpec()
    models = {
        "production": (toy_model(), spec, "Production", None),
        "staged": (toy_model(uncertainty_bias=STAGED_BIAS), spec, "Staging", None),
        "champion": (
            toy_model(uncertainty_width=2, uncertainty_bias=SIGMAS_2_WIDE, confidence=CONFIDENCE),
            None,
            None,
            "champion",
        ),
        "pinned": (toy_model(uncertainty_bias=(0.12, 0.22, -0.2)), spec, None, None),
        "bad_rho": (toy_model(uncertainty_bias=(0.1, 0.2, 1.5)), spec, None, None),
    }
    versions = {}
    for role, (model, model_spec, stage, alias) in models.items():
        versions[role], _ = register_onnx_model(
            client, experiment, NAME, model, model_spec, stage=stage, alias=alias
        )
    assert len(set(versions.values())) == len(versions)
    return Registry(settings.local_registry_dir, versions)


def listing(home: Path) -> dict[str, str]:
    """Every path under the store with its content's sha256 ("dir" for folders, the target
    for symlinks)."""
    models = home / "models"
    if models.is_file():
        return {".": hashlib.sha256(models.read_bytes()).hexdigest()}
    if not models.exists():
        return {}

    def content(path: Path) -> str:
        if path.is_symlink():
            return f"-> {os.readlink(path)}"
        return "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()

    return {str(p.relative_to(models)): content(p) for p in sorted(models.rglob("*"))}


def stored_info(home: Path, tag: str) -> dict:
    name, version = tag.split(":")
    return yaml.safe_load((home / "models" / name / version / "model.yaml").read_text())


def error_line(stderr: str) -> str:
    """The one line import_model.py prints for a failure; no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("import_model: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def import_env(home: Path, temp: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment `run_import_model` gives import_model.py, with a private TMPDIR."""
    return {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "1",
        "TMPDIR": str(temp),
        **env,
    }


def read_only_mount(folder: Path) -> list[str]:
    """A command prefix that runs its command with `folder` read-only: for root (whom chmod
    does not stop) a read-only bind mount in a private mount namespace; [] where that is not
    possible."""
    if not shutil.which("unshare"):
        return []
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    probe = subprocess.run([*prefix, str(folder), "true"], capture_output=True, timeout=30)
    return [*prefix, str(folder)] if probe.returncode == 0 else []


@dataclass
class Launched:
    """An import_model.py run started in the background, and the store it ran against."""

    process: subprocess.Popen[str] | None  # None: not possible on this machine (`skip`)
    home: Path
    temp: Path
    before: dict[str, str]
    skip: str = ""

    def finish(self) -> tuple[int, str]:
        if self.process is None:
            pytest.skip(self.skip)
        _, stderr = self.process.communicate(timeout=300)
        for folder in (p for p in self.home.rglob("*") if p.is_dir() and not p.is_symlink()):
            folder.chmod(0o755)  # the non-root read-only store
        return self.process.returncode, stderr


def _prepare(case: str, home: Path) -> tuple[list[str], str]:
    """Make `home`'s store refuse the way `case` says: (command prefix, why not possible)."""
    models = home / "models"
    if case == "read-only store":
        models.mkdir(parents=True)
        if os.geteuid() != 0:
            models.chmod(0o555)
            return [], ""
        prefix = read_only_mount(models)
        return prefix, "" if prefix else "root without mount privileges: cannot make it read-only"
    if case == "models folder is a file":
        home.mkdir()
        models.write_text("not a folder\n")
    elif case == "latest pointer unwritable":
        # the files go in, then BentoML's `latest` pointer cannot be written (a symlink into
        # a folder that does not exist: this stops root as well)
        (models / NAME).mkdir(parents=True)
        (models / NAME / "latest").symlink_to(home / "gone" / "latest")
    return [], ""


STORE_CASES = ["read-only store", "models folder is a file", "latest pointer unwritable"]


@pytest.fixture(scope="module")
def background(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Launched]]:
    """The imports that depend on no other, all started at once: they run while the module
    imports into its shared store (an import is mostly start-up, the machine has cores)."""
    launched = {}
    for case in [*STORE_CASES, "contract"]:
        root = tmp_path_factory.mktemp("promises-bg")
        home, temp = root / "home", root / "tmp"
        temp.mkdir()
        env = dict(registry.env)
        if case == "contract":
            prefix, skip = [], ""
            env["MODEL_VERSION"] = registry.versions["bad_rho"]
        else:
            prefix, skip = _prepare(case, home)
        before = listing(home)
        process = None
        if not skip:
            process = subprocess.Popen(
                [*prefix, sys.executable, "import_model.py"],
                cwd=PROJECT_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=import_env(home, temp, env),
            )
        launched[case] = Launched(process, home, temp, before, skip)
    yield launched
    for item in launched.values():
        if item.process is not None and item.process.poll() is None:
            item.process.kill()
            item.process.communicate()


# --- imports configured by environment variables ----------------------------------------------


@dataclass(frozen=True)
class Imported:
    home: Path
    runs: dict[str, subprocess.CompletedProcess[str]]  # how -> the import run

    def result(self, how: str) -> dict:
        run = self.runs[how]
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout.strip().splitlines()[-1])

    def tag(self, how: str) -> str:
        return str(self.result(how)["tag"])


# In this order, into one store: the last one is the newest import.
ENV_IMPORTS: dict[str, dict[str, str]] = {
    "MODEL_VERSION": {"MODEL_VERSION": "<pinned>"},
    "MODEL_STAGE": {"MODEL_STAGE": "Staging"},
    # MODEL_STAGE is ignored when an alias is set (README, "Configuration")
    "MODEL_ALIAS": {"MODEL_ALIAS": "champion", "MODEL_STAGE": "Staging"},
}


@pytest.fixture(scope="module")
def imported(
    registry: Registry, background: dict[str, Launched], tmp_path_factory: pytest.TempPathFactory
) -> Imported:
    """One store, three imports in turn (`background` is only asked for to start first)."""
    home = tmp_path_factory.mktemp("promises-home")
    runs = {}
    for how, variables in ENV_IMPORTS.items():
        env = {
            key: registry.versions["pinned"] if value == "<pinned>" else value
            for key, value in variables.items()
        }
        runs[how] = run_import_model(home, "--json", env={**registry.env, **env})
    return Imported(home, runs)


@pytest.mark.parametrize(
    ("how", "role", "stage", "alias", "uri"),
    [
        ("MODEL_VERSION", "pinned", None, None, "models:/localization_model/{version}"),
        ("MODEL_STAGE", "staged", "Staging", None, "models:/localization_model/Staging"),
        ("MODEL_ALIAS", "champion", None, "champion", "models:/localization_model@champion"),
    ],
)
def test_model_stage_alias_and_version_from_the_environment(
    registry: Registry,
    imported: Imported,
    how: str,
    role: str,
    stage: str | None,
    alias: str | None,
    uri: str,
) -> None:
    """Each variable alone picks its version; without them the import would take the
    Production version, which none of these is."""
    version = registry.versions[role]
    assert version != registry.versions["production"]
    result = imported.result(how)
    assert result["mlflow_version"] == version
    assert (result["stage"], result["alias"]) == (stage, alias)
    info = stored_info(imported.home, result["tag"])
    labels = info["labels"]
    assert labels["mlflow_version"] == version
    assert labels.get("mlflow_stage") == stage and labels.get("mlflow_alias") == alias
    assert info["metadata"]["source_model_uri"] == uri.format(version=version)


# --- exit code 7: the BentoML store refuses the model ----------------------------------------


@pytest.mark.parametrize("case", STORE_CASES)
def test_a_store_that_refuses_exits_7_and_keeps_nothing(
    background: dict[str, Launched], case: str
) -> None:
    """README: exit 7 "the BentoML store refused the model", and `bentoml.models.create`
    "atomic: a failure leaves the store as it was", whether the store refuses before the
    files go in or after."""
    launched = background[case]
    code, stderr = launched.finish()
    assert code == 7, stderr
    line = error_line(stderr)
    assert line.startswith("import_model: error: store error: BentoML model store: "), line
    assert listing(launched.home) == launched.before
    # nothing half-written anywhere: not in the store, not in the temporary folder (where
    # BentoML builds a model before it copies it in; `import onnxruntime` leaves a `.ses`)
    assert [p.name for p in launched.temp.iterdir() if p.name != ".ses"] == []


# --- the contract refuses a model, through a real import --------------------------------------


def test_a_contract_violation_exits_5_and_names_the_output(
    background: dict[str, Launched],
) -> None:
    launched = background["contract"]
    code, stderr = launched.finish()
    assert code == 5, stderr
    assert error_line(stderr) == (
        "import_model: error: contract violation: output 'uncertainties': "
        "rho (column 2) must be in (-1, 1)"
    )
    assert listing(launched.home) == launched.before == {}


# --- what the service serves ------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    newest: Server  # BENTO_MODEL_TAG unset
    pinned: Server  # BENTO_MODEL_TAG = the MODEL_STAGE import (older than the newest)
    pinned_tag: str


@pytest.fixture(scope="module")
def servers(imported: Imported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("promises-serve")
    # servers sharing a BENTOML_HOME share (and reset) one Prometheus folder: a copy each
    pinned_home = root / "pinned-home"
    shutil.copytree(imported.home, pinned_home)
    pinned_tag = imported.tag("MODEL_STAGE")
    env = {"SERVICE_WORKERS": "1"}
    with ThreadPoolExecutor(max_workers=2) as pool:  # both start at once
        starts = [
            pool.submit(start_server, imported.home, root / "newest.log", env),
            pool.submit(
                start_server,
                pinned_home,
                root / "pinned.log",
                {**env, "BENTO_MODEL_TAG": pinned_tag},
            ),
        ]
    failed = [s.exception() for s in starts if s.exception() is not None]
    started = [s.result() for s in starts if s.exception() is None]
    try:
        if failed:
            raise failed[0]
        yield Servers(started[0], started[1], pinned_tag)
    finally:
        for server in started:
            server.stop()


def model_info(server: Server) -> dict:
    response = httpx.get(f"{server.url}/model/info", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def predict(server: Server, seeds: list[int]) -> list[dict]:
    captures = generate_scenes(max(seeds) + 1, seed=4242, spec=FeatureSpec()).iq
    body = {"iq_b64_samples": [encode_capture(captures[s]) for s in seeds], "cache_enabled": False}
    response = httpx.post(f"{server.url}/predict_batch", json=body, timeout=60)
    assert response.status_code == 200, response.text
    single = httpx.post(
        f"{server.url}/predict", json={"iq_b64": body["iq_b64_samples"][0]}, timeout=60
    )
    assert single.status_code == 200, single.text
    return [single.json(), *response.json()["predictions"]]


def wgs84_radii(latitude_deg: float) -> tuple[float, float]:
    """Meridian and prime-vertical radii of curvature (metres), from the ellipsoid's
    definition: the conversion docs/api.md §8.1 prescribes, computed independently."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    s2 = math.sin(math.radians(latitude_deg)) ** 2
    return a * (1 - e2) / (1 - e2 * s2) ** 1.5, a / math.sqrt(1 - e2 * s2)


def test_newest_import_is_served_when_no_tag_is_set(servers: Servers, imported: Imported) -> None:
    newest, older = imported.tag("MODEL_ALIAS"), servers.pinned_tag
    created = {t: stored_info(imported.home, t)["creation_time"] for t in (newest, older)}
    assert created[older] < created[newest]  # the pinned one really is the older import
    info = model_info(servers.newest)
    assert info["bento_model_tag"] == newest
    assert info["workers_agree"] and {w["bento_model_tag"] for w in info["workers"]} == {newest}


def test_bento_model_tag_serves_an_older_import(
    servers: Servers, imported: Imported, registry: Registry
) -> None:
    info = model_info(servers.pinned)
    assert info["bento_model_tag"] == servers.pinned_tag
    assert info["version"] == registry.versions["staged"]
    answers = predict(servers.pinned, [0, 1])
    for answer in answers:  # the Staging model's own outputs: rho, no confidence
        assert answer["model_version"] == info["model_version"]
        assert answer["model_version"].startswith(registry.versions["staged"] + "+")
        assert answer["uncertainty"]["rho"] == pytest.approx(STAGED_BIAS[2], abs=1e-6)
        assert answer["confidence"] is None


def test_confidence_and_two_wide_uncertainties_are_served_as_documented(
    servers: Servers, registry: Registry
) -> None:
    """docs/api.md §8.1: a `confidence` output is the response's `confidence` (never null,
    never invented); 2 columns mean rho 0; column 0 (latitude) is `sigma_y` (north), column 1
    (longitude) `sigma_x` (east), degrees to metres with the WGS84 radii at the latitude."""
    info = model_info(servers.newest)
    assert info["version"] == registry.versions["champion"]
    answers = predict(servers.newest, [0, 1, 2])
    assert len(answers) == 4
    for answer in answers:
        assert answer["confidence"] == CONFIDENCE
        assert answer["model_version"] == info["model_version"]
        u, lat = answer["uncertainty"], answer["position"]["latitude"]
        meridian, prime_vertical = wgs84_radii(lat)
        sigma_lat, sigma_lon = SIGMAS_2_WIDE  # float32 in the model: 1e-8 relative
        assert u["rho"] == 0.0
        assert u["sigma_y"] == pytest.approx(meridian * math.radians(sigma_lat), rel=1e-6)
        assert u["sigma_x"] == pytest.approx(
            prime_vertical * math.cos(math.radians(lat)) * math.radians(sigma_lon), rel=1e-6
        )
        # east is the longer axis here, so the ellipse points east (bearing 90)
        assert u["theta"] == pytest.approx(90.0) and answer["ellipse"]["orientation_deg"] == (
            pytest.approx(90.0)
        )
        k95 = math.sqrt(-2 * math.log(1 - 0.95))
        assert answer["ellipse"]["semi_major_m"] == pytest.approx(k95 * u["sigma_x"], rel=1e-9)


def test_model_info_of_an_alias_import_and_a_stage_import(
    servers: Servers, registry: Registry
) -> None:
    """docs/api.md §2.4: `stage` is the registry stage, or the alias when the import recorded
    no stage; `alias` the alias it was taken by; `feature_spec_source` "artifact" or
    "defaults", the latter with a warning."""
    by_alias = model_info(servers.newest)
    assert by_alias["name"] == NAME and by_alias["version"] == registry.versions["champion"]
    assert by_alias["stage"] == "champion" and by_alias["alias"] == "champion"
    assert by_alias["feature_spec_source"] == "defaults"
    (warning,) = by_alias["warnings"]
    assert "no feature_spec.json beside the model" in warning
    assert "documented default feature spec (5 receivers: Torino" in warning
    assert [r["name"] for r in by_alias["feature_spec"]["receivers"]][0] == "Torino"

    by_stage = model_info(servers.pinned)
    assert by_stage["stage"] == "Staging" and by_stage["alias"] is None
    assert by_stage["feature_spec_source"] == "artifact" and by_stage["warnings"] == []
