"""README promises about the running service, proved through real `bentoml serve` processes.

Two servers, each started once for the module, one worker each:

- `server`: the embedded defaults where they matter (no `REDIS_URL`, so the in-process LRU;
  `ACCESS_LOG` unset) plus `CACHE_MAX_ENTRIES=2`, `ORT_PROVIDERS` asking for CUDA on a CPU
  build, ONNX Runtime thread counts other than the defaults and `MAX_BATCH_ITEMS=3`. It is
  started by this module, which probes `/readyz` and `/livez` from the moment the process
  exists, so readiness is judged from its very first answer.
- `quiet`: `ACCESS_LOG=false` and a greedy batcher whose wait budget
  (`BATCH_WAIT_BUDGET_SHARE` x `REQUEST_TIMEOUT_S`) is shorter than one batch, so a burst of
  concurrent requests overloads it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.support.serving import Server, free_port, start_server
from utils.api.decoding import encode_capture
from utils.config import PROJECT_ROOT
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes
from utils.model.runtime import default_intra_threads

# ONNX Runtime threads unlike the defaults for one worker, so reading them back proves they
# came from the environment: intra defaults to cores per worker, inter to 1
INTRA_THREADS = 1 if default_intra_threads(1) != 1 else 2
INTER_THREADS = 2
MAX_BATCH_ITEMS = 3
# the service logs this once the model is loaded and its warm-up inference answered
LOADED = re.compile(r"\bserving \S+:\S+ \(\S+\), (\w+) cache, ")
FALLBACK = "execution providers ['CUDAExecutionProvider'] are not available here"


def scenes(n: int, seed: int) -> list[np.ndarray]:
    return list(generate_scenes(n, seed=seed, spec=FeatureSpec()).iq)


def pairs(capture: np.ndarray) -> list:
    return np.stack([capture.real, capture.imag], axis=-1).tolist()


def post(server: Server, body: dict, path: str = "/predict", timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=timeout)


def metric(server: Server, name: str, labels: str = "") -> float:
    """A metric summed over its label sets (those containing `labels`) on /metrics."""
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        head = line.split(" ", 1)[0]
        if (head == name or head.startswith(name + "{")) and labels in head:
            total += float(line.rsplit(" ", 1)[1])
    return total


def predict(server: Server, capture: np.ndarray, **options: object) -> dict:
    r = post(server, {"iq_b64": encode_capture(capture), **options})
    assert r.status_code == 200, r.text
    return r.json()


def fix(answer: dict) -> dict:
    """Only fixes are cached: a capture the cache tests use must be one."""
    assert answer["quality"] == "fix", answer["warnings"]
    return answer


# --- the servers ---------------------------------------------------------------------------------


@dataclass
class Probe:
    """One look at a starting server: each endpoint's status, or why there was none."""

    readyz: int | str
    livez: int | str
    loaded: bool  # the log held the model-loaded line once the probe had its answers


@dataclass
class Startup:
    server: Server
    probes: list[Probe] = field(default_factory=list)


def _status(url: str) -> int | str:
    try:
        return httpx.get(url, timeout=1.0).status_code
    except httpx.ConnectError:
        return "refused"
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError as exc:
        return type(exc).__name__


def launch_and_probe(home: Path, log_path: Path, env: dict[str, str]) -> Startup:
    """`bentoml serve` as `start_server` runs it, probed from the moment the process exists
    until `/readyz` has answered 200 three times in a row."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service:Localization"]
        + ["--port", str(port), "--host", "127.0.0.1"],
        cwd=PROJECT_ROOT,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={
            **os.environ,
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "1",
            **env,
        },
    )
    startup = Startup(Server(f"http://127.0.0.1:{port}", process, log_path))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = startup.server.log()[-3000:]
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{log}")
        readyz = _status(f"{startup.server.url}/readyz")
        livez = _status(f"{startup.server.url}/livez")
        loaded = LOADED.search(startup.server.log()) is not None
        startup.probes.append(Probe(readyz, livez, loaded))
        if [p.readyz for p in startup.probes[-3:]] == [200, 200, 200]:
            return startup
        time.sleep(0.2)
    startup.server.stop()
    raise RuntimeError(f"bentoml serve not ready in 180 s:\n{startup.server.log()[-3000:]}")


@pytest.fixture(scope="module")
def startup(home: Path) -> Iterator[Startup]:
    assert "CUDAExecutionProvider" not in ort.get_available_providers(), (
        "the fallback test needs the CPU build of onnxruntime (requirements/serve.lock)"
    )
    started = launch_and_probe(
        home,
        home / "promises.log",
        {
            "SERVICE_WORKERS": "1",
            "REDIS_URL": "",  # blank is unset: the in-process LRU
            "CACHE_MAX_ENTRIES": "2",
            "ORT_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",
            "ORT_INTRA_OP_THREADS": str(INTRA_THREADS),
            "ORT_INTER_OP_THREADS": str(INTER_THREADS),
            "MAX_BATCH_ITEMS": str(MAX_BATCH_ITEMS),
        },
    )
    yield started
    started.server.stop()


@pytest.fixture(scope="module")
def server(startup: Startup) -> Server:
    return startup.server


@pytest.fixture(scope="module")
def quiet(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # a home of its own: servers sharing one share (and reset) the Prometheus folder
    own = tmp_path_factory.mktemp("quiet-home")
    shutil.copytree(home / "models", own / "models")
    srv = start_server(
        own,
        own / "quiet.log",
        env={
            "SERVICE_WORKERS": "1",
            "ACCESS_LOG": "false",
            "BATCH_DISPATCH": "greedy",
            "BATCH_MAX_SIZE": "2",  # BentoML refuses 1 for the batchable `infer` API
            "REQUEST_TIMEOUT_S": "10",
            # a 0.1 ms wait budget: anything queued behind a running batch is over it
            "BATCH_WAIT_BUDGET_SHARE": "0.00001",
        },
    )
    yield srv
    srv.stop()


# --- 1. overload: 503 with Retry-After -----------------------------------------------------------


def burst(srv: Server, body: dict, n: int) -> list[httpx.Response]:
    """`n` copies of one /predict, released together."""
    gate = threading.Barrier(n)

    def one(_: int) -> httpx.Response:
        gate.wait()
        return post(srv, body)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def test_an_overloaded_service_answers_503_with_retry_after(quiet: Server) -> None:
    """README, "Batching": a request whose expected wait exceeds `BATCH_WAIT_BUDGET_SHARE` x
    `REQUEST_TIMEOUT_S` is refused at once with 503 and `Retry-After`, in the one error shape."""
    capture = scenes(1, seed=7101)[0]
    body = {"iq_b64": encode_capture(capture), "cache_enabled": False}
    # a lone request finds the batcher idle: no wait, answered (and a batch duration measured)
    assert post(quiet, body).status_code == 200
    overloaded0 = metric(quiet, "rfloc_overloaded_total")
    refused: list[httpx.Response] = []
    answered = 0
    for _ in range(3):  # a burst, again only if no request happened to queue
        responses = burst(quiet, body, 24)
        assert {r.status_code for r in responses} <= {200, 503}, [
            (r.status_code, r.text[:200]) for r in responses
        ]
        refused += [r for r in responses if r.status_code == 503]
        answered += sum(r.status_code == 200 for r in responses)
        if refused:
            break
    assert refused, "no request of three 24-request bursts was refused"
    assert answered, "the batcher refused even the requests that found it idle"
    for r in refused:
        payload = r.json()
        assert set(payload) == {"error", "field", "detail"}, payload
        assert payload["field"] is None and payload["error"].startswith("overloaded: ")
        assert [d["type"] for d in payload["detail"]] == ["overloaded"]
        retry_after = r.headers.get("retry-after")
        assert retry_after is not None and retry_after.isdigit(), r.headers
        assert int(retry_after) >= 1
    assert metric(quiet, "rfloc_overloaded_total") == overloaded0 + len(refused)
    # refusals cost nothing lasting: the next lone request is answered
    assert post(quiet, body).status_code == 200


# --- 2. iq_data and iq_b64 share a cache entry ---------------------------------------------------


def test_iq_data_and_iq_b64_of_the_same_samples_share_a_cache_entry(server: Server) -> None:
    capture = scenes(1, seed=7201)[0]
    hits0 = metric(server, "rfloc_cache_hits_total")
    misses0 = metric(server, "rfloc_cache_misses_total")
    by_pairs = post(server, {"iq_data": pairs(capture)})
    assert by_pairs.status_code == 200, by_pairs.text
    first = fix(by_pairs.json())
    assert first["cache_hit"] is False
    second = predict(server, capture)  # the same samples as iq_b64
    assert second["cache_hit"] is True
    assert second["position"] == first["position"]
    assert second["uncertainty"] == first["uncertainty"]
    assert metric(server, "rfloc_cache_hits_total") == hits0 + 1
    assert metric(server, "rfloc_cache_misses_total") == misses0 + 1


# --- 3. the in-process LRU and its bound ---------------------------------------------------------


def test_without_redis_each_worker_caches_in_a_bounded_lru(server: Server) -> None:
    """No `REDIS_URL`: the in-process LRU, holding `CACHE_MAX_ENTRIES` (2 here) answers."""
    match = LOADED.search(server.log())
    assert match and match.group(1) == "memory", "the service logs its cache backend"
    a, b, c = scenes(3, seed=7301)
    assert [fix(predict(server, x))["cache_hit"] for x in (a, b, c)] == [False] * 3
    assert predict(server, c)["cache_hit"] is True  # a recent one is held
    assert predict(server, a)["cache_hit"] is False  # the oldest of three was evicted
    assert predict(server, a)["cache_hit"] is True  # and is held again
    assert predict(server, c)["cache_hit"] is True  # c was used after b ...
    assert predict(server, b)["cache_hit"] is False  # ... so b went when a came back


# --- 4. ORT_PROVIDERS fallback, ORT threads ------------------------------------------------------


def test_a_missing_execution_provider_falls_back_to_cpu_with_one_warning(server: Server) -> None:
    log = server.log()
    warnings = [line for line in log.splitlines() if FALLBACK in line]
    assert len(warnings) == 1, warnings or log[-3000:]
    assert "WARNING" in warnings[0] and "CPUExecutionProvider" in warnings[0]
    info = httpx.get(f"{server.url}/model/info", timeout=10).json()
    assert info["runtime"]["providers"] == ["CPUExecutionProvider"]
    fix(predict(server, scenes(1, seed=7401)[0], cache_enabled=False))  # and it answers


def test_ort_thread_settings_reach_the_session(server: Server) -> None:
    runtime = httpx.get(f"{server.url}/model/info", timeout=10).json()["runtime"]
    assert runtime["intra_op_threads"] == INTRA_THREADS
    assert runtime["inter_op_threads"] == INTER_THREADS


# --- 5. ACCESS_LOG -------------------------------------------------------------------------------


ACCESS_LINE = re.compile(r"path=/ellipse\b.*status=200")
REJECTED = ": rejected input ("
ELLIPSE = {"latitude": 45.07, "longitude": 7.69, "sigma_x": 300.0, "sigma_y": 100.0}


def _ellipses_then_marker(srv: Server) -> None:
    """Three /ellipse requests, then a refused body: its INFO line (`utils/serving/
    log_filters.py`) is written after any access line of the three, so once it is in the log
    the three's lines are too, if there are any."""
    marks = srv.log().count(REJECTED)
    for _ in range(3):
        assert post(srv, ELLIPSE, path="/ellipse").status_code == 200
    assert post(srv, {**ELLIPSE, "unknown": 1}, path="/ellipse").status_code == 400
    deadline = time.monotonic() + 30
    while srv.log().count(REJECTED) == marks:
        assert time.monotonic() < deadline, f"no log line for the refused body:\n{srv.log()}"
        time.sleep(0.1)


def test_access_log_by_default(server: Server) -> None:
    before = len(ACCESS_LINE.findall(server.log()))
    _ellipses_then_marker(server)
    assert len(ACCESS_LINE.findall(server.log())) == before + 3


def test_access_log_false_logs_no_request(quiet: Server) -> None:
    _ellipses_then_marker(quiet)
    log = quiet.log()
    assert not ACCESS_LINE.search(log)
    assert not re.search(r"\(scheme=http,method=", log), "an access line of another request"


# --- 6. metrics after provoking them -------------------------------------------------------------


def test_too_many_items_is_counted(server: Server) -> None:
    name, labels = "rfloc_errors_total", 'type="too_many_items"'
    before = metric(server, name, labels)
    captures = scenes(MAX_BATCH_ITEMS + 1, seed=7601)
    r = post(
        server, {"iq_b64_samples": [encode_capture(c) for c in captures]}, path="/predict_batch"
    )
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "iq_b64_samples"
    assert metric(server, name, labels) == before + 1
    # at the limit it is a request like any other, and counts nothing
    r = post(
        server,
        {"iq_b64_samples": [encode_capture(c) for c in captures[:MAX_BATCH_ITEMS]]},
        path="/predict_batch",
    )
    assert r.status_code == 200, r.text
    assert metric(server, name, labels) == before + 1


def test_inference_seconds_grows_with_a_prediction(server: Server) -> None:
    count0 = metric(server, "rfloc_inference_seconds_count")
    total0 = metric(server, "rfloc_inference_seconds_sum")
    predict(server, scenes(1, seed=7602)[0], cache_enabled=False)  # one batch of one
    assert metric(server, "rfloc_inference_seconds_count") == count0 + 1
    assert metric(server, "rfloc_inference_seconds_sum") > total0


# --- 7. readiness before warm-up -----------------------------------------------------------------


def test_readyz_is_200_only_once_the_model_is_loaded_and_warmed(
    startup: Startup, report: list[str]
) -> None:
    """BentoML builds the service instance (model load, sha256, warm-up inference) before its
    worker serves HTTP, so before readiness `/readyz` gives no answer at all: refused until
    the socket is bound, then held unanswered while the worker loads (`timeout` here). A 503
    could only come from `__is_ready__` in a serving worker; either way, never a 200."""
    probes = startup.probes
    first = next(i for i, p in enumerate(probes) if p.readyz == 200)
    assert first > 0, "the first look already found it ready: the start was not observed"
    before = probes[:first]
    seen = Counter(str(p.readyz) for p in before)
    report.append(
        f"readiness: {first} probes of /readyz before its first 200 ("
        + ", ".join(f"{kind} {n}" for kind, n in sorted(seen.items()))
        + f"); /livez answered 200 {sum(p.livez == 200 for p in before)} times among them"
    )
    # before: no answer yet (nothing listening, or the worker still loading) or a non-200
    assert all(p.readyz != 200 for p in before)
    assert all(isinstance(p.readyz, str) or p.readyz >= 500 for p in before), before
    # the first 200 came after the model was loaded and answered its warm-up inference
    assert probes[first].loaded, "readyz answered 200 before the model-loaded log line"
    # and it stays ready
    assert all(p.readyz == 200 for p in probes[first:])
    assert all(p.livez == 200 for p in probes[first:])
