"""benchmarks/path.py's attribution: which stage a py-spy stack counts for, and the conversion
of samples into CPU µs per request. Stacks are written as py-spy writes them (raw format,
`--full-filenames`), outermost frame first."""

from __future__ import annotations

import collections
import sysconfig

import pytest

from benchmarks import path
from utils.config import PROJECT_ROOT

SITE = sysconfig.get_paths()["purelib"]
STDLIB = sysconfig.get_paths()["stdlib"]
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LIBPYTHON = "/opt/python/lib/libpython3.11.so.1.0"


def site(func: str, file: str, line: int = 1) -> str:
    return f"{func} ({SITE}/{file}:{line})"


def project(func: str, file: str, line: int = 1) -> str:
    return f"{func} ({PROJECT_ROOT}/{file}:{line})"


def stdlib(func: str, file: str, line: int = 1) -> str:
    return f"{func} ({STDLIB}/{file}:{line})"


def native(func: str, library: str) -> str:
    return f"{func} ({library})"


THREAD = "thread: MainThread"
#: the worker's start-up frames, under every sample of its event loop
BOOT = (
    THREAD,
    site("main", "_bentoml_impl/worker/service.py", 242),
    site("Server.run", "uvicorn/server.py", 86),
    site("asyncio_run", "uvicorn/_compat.py", 30),
    stdlib("Runner.run", "asyncio/runners.py", 118),
)
LAYERS = (
    project("ClientGone.__call__", "utils/asgi/client_gone.py", 110),
    project("FieldGuard.__call__", "utils/asgi/field_guard.py", 57),
)
APP = (
    *BOOT,
    *LAYERS,
    site("Router.__call__", "starlette/routing.py", 683),
    site("ServiceAppFactory.api_endpoint", "_bentoml_impl/server/app.py", 785),
)


@pytest.fixture(scope="module")
def classifier() -> path.Classifier:
    return path.Classifier(path.asgi_layer_files())


def test_the_layers_are_read_from_the_stack_in_order() -> None:
    layers = [name for _, name in path.asgi_layer_files()]
    assert layers[0] == "ClientGone" and "FieldGuard" in layers and "IQFastPath" in layers
    assert all(file.startswith("utils/asgi/") for file, _ in path.asgi_layer_files())


@pytest.mark.parametrize(
    ("stack", "stage"),
    [
        # a library call counts for the stage that called it
        (
            (
                *BOOT,
                project("GreedyBatcher._run", "utils/serving/greedy.py"),
                project("ModelRuntime.predict", "utils/model/runtime.py"),
                project("preprocess_many", "utils/dsp/preprocessing.py"),
                site("c2c", "scipy/fft/_pocketfft/basic.py"),
            ),
            path.PREPROCESSING,
        ),
        # the amplitude bound lives in preprocessing.py but is the decoder's check
        (
            (
                *APP,
                project("decode_iq_b64", "utils/api/decoding.py"),
                project("check_amplitude", "utils/api/decoding.py"),
                project("peak_amplitude", "utils/dsp/preprocessing.py"),
            ),
            path.DECODE,
        ),
        (
            (
                *APP,
                site("JSONSerde.deserialize_model", "_bentoml_impl/serde.py"),
                site("BaseModel.model_validate_json", "pydantic/main.py"),
            ),
            path.VALIDATION,
        ),
        (
            (
                *APP,
                site("JSONSerde.serialize_model", "_bentoml_impl/serde.py"),
                site("BaseModel.model_dump_json", "pydantic/main.py"),
            ),
            path.SERIALIZATION,
        ),
        # a pydantic model built in the response path is response building, not validation
        (
            (
                *APP,
                project("build_predictions", "utils/api/responses.py"),
                site("BaseModel.__init__", "pydantic/main.py"),
            ),
            path.RESPONSE,
        ),
        ((*BOOT, *LAYERS), path.layer_stage("FieldGuard")),
        (APP, path.DISPATCH),
        # prometheus_client by its caller
        (
            (
                *BOOT,
                site(
                    "RunnerTrafficMetricsMiddleware.__call__",
                    "bentoml/_internal/server/http/instruments.py",
                ),
                site("Histogram.observe", "prometheus_client/metrics.py"),
            ),
            path.METRICS_BENTO,
        ),
        (
            (
                *BOOT,
                project("infer_batch", "utils/api/pipeline.py"),
                site("MetricWrapperBase.labels", "prometheus_client/metrics.py"),
            ),
            path.METRICS_OURS,
        ),
        # the worker's start-up frames are not BentoML dispatch: uvloop's own time
        (BOOT, path.EVENT_LOOP),
        # native frames: a syscall counts for the Python code that made it
        (
            (
                *APP,
                site("RequestResponseCycle.send", "uvicorn/protocols/http/httptools_impl.py"),
                native("UVStream__try_write", "loop.c"),
                native("write", LIBC),
            ),
            path.HTTP,
        ),
        (
            (
                *BOOT,
                site("AccessLogMiddleware.__call__", "bentoml/_internal/server/http/access.py"),
                stdlib("StreamHandler.emit", "logging/__init__.py"),
                native("write", LIBC),
            ),
            path.BENTO_MIDDLEWARE,
        ),
        ((*BOOT, native("uv__read", "stream.c"), native("read", LIBC)), path.HTTP),
        # a collection counts as itself wherever an allocation triggered it
        (
            (
                *APP,
                project("decode_iq_b64", "utils/api/decoding.py"),
                native("gc_collect_main", LIBPYTHON),
            ),
            path.GC,
        ),
        # a thread that waits is not using the CPU
        (
            (
                "thread: AnyIO worker thread",
                stdlib("Queue.get", "queue.py", 171),
                native("PyThread_acquire_lock_timed", LIBPYTHON),
                native("0x7f6e65ca3f16", LIBC),
            ),
            path.WAITING,
        ),
        ((THREAD, stdlib("<listcomp>", "somewhere.py")), path.OTHER),
    ],
)
def test_a_stack_counts_for_its_innermost_named_stage(
    classifier: path.Classifier, stack: tuple[str, ...], stage: str
) -> None:
    assert classifier.classify(stack) == stage


def test_frames_shown_without_this_machines_paths() -> None:
    shown = path.top_frames((*APP, native("write", LIBC)))
    assert str(PROJECT_ROOT) not in shown and SITE not in shown and "/usr/lib" not in shown
    assert shown.startswith("write (libc.so.6) ← ServiceAppFactory.api_endpoint")


def test_read_raw_keeps_each_threads_name_and_id(tmp_path) -> None:
    raw = tmp_path / "w.raw"
    raw.write_text(
        "thread (4101): MainThread;"
        + ";".join(BOOT[1:])
        + " 7\n"
        + "thread (4102): AnyIO worker thread;"
        + stdlib("Queue.get", "queue.py")
        + " 3\n"
    )
    samples = path.read_raw(raw)
    assert sum(samples.values()) == 10
    assert {path.thread_of(s) for s in samples} == {
        ("MainThread", 4101),
        ("AnyIO worker thread", 4102),
    }
    assert path.top_frames(next(iter(samples)), depth=10).endswith("thread: MainThread")


def test_shares_of_each_worker_scale_by_its_own_cpu(classifier: path.Classifier) -> None:
    """Worker 0: 3 of 4 samples preprocessing, 1.0 CPU s; worker 1: all HTTP, 0.5 CPU s;
    100 requests: preprocessing 7500 µs, HTTP 2500 + 5000 µs per request."""
    pre = (*BOOT, project("preprocess_many", "utils/dsp/preprocessing.py"))
    http = (*BOOT, site("RequestResponseCycle.send", "uvicorn/protocols/http/httptools_impl.py"))
    waits = (THREAD, native("epoll_pwait", LIBC))
    worker0 = collections.Counter({pre: 3, http: 1, waits: 5})
    worker1 = collections.Counter({http: 2})
    figures = path.stage_figures([worker0, worker1], [1.0, 0.5], 100, classifier)
    stages = figures["stages"]
    assert stages[path.PREPROCESSING]["us_per_request"] == pytest.approx(7500.0)
    assert stages[path.HTTP]["us_per_request"] == pytest.approx(7500.0)
    assert stages[path.PREPROCESSING]["share"] == pytest.approx(0.5)
    assert figures["waiting_samples_left_out"] == 5
    assert sum(s["us_per_request"] for s in stages.values()) == pytest.approx(15000.0)


def test_bentoml_log_filters_count_for_its_access_log(classifier: path.Classifier) -> None:
    stack = (
        *BOOT,
        site("AccessLogMiddleware.__call__", "bentoml/_internal/server/http/access.py"),
        stdlib("Logger.handle", "logging/__init__.py"),
        site("TraceRecordFilter.filter", "bentoml/_internal/log.py"),
    )
    assert classifier.decide(stack) == (
        path.BENTO_MIDDLEWARE,
        "AccessLogMiddleware.__call__ (bentoml/_internal/server/http/access.py)",
    )


def test_each_thread_gets_its_own_cpu(classifier: path.Classifier) -> None:
    """py-spy counts a runnable thread as busy: the loop thread's samples while the model's
    thread holds the core must not take the model's CPU. Loop thread (2 samples, 0.1 s),
    model thread (2 samples, 0.9 s), one thread psutil did not time (1 sample) gets what the
    worker's 1.2 s leaves: 0.2 s."""
    loop = "thread: MainThread #11"
    model = "thread: AnyIO worker thread #12"
    gone = "thread: AnyIO worker thread #13"
    onnx = (site("Session.run", "onnxruntime/capi/onnxruntime_inference_collection.py"),)
    http = (site("RequestResponseCycle.send", "uvicorn/protocols/http/httptools_impl.py"),)
    recording = collections.Counter(
        {
            (loop, *BOOT[1:], *http): 1,
            (loop, *BOOT[1:]): 1,
            (model, *onnx): 2,
            (gone, *onnx): 1,
            (loop, *BOOT[1:], native("epoll_pwait", LIBC)): 40,
        }
    )
    figures = path.stage_figures(
        [recording], [1.2], 1, classifier, threads_cpu=[{11: 0.1, 12: 0.9, 14: 0.3}]
    )
    stages = figures["stages"]
    assert stages[path.ONNX]["us_per_request"] == pytest.approx(1.1e6)
    assert stages[path.HTTP]["us_per_request"] == pytest.approx(0.05e6)
    assert stages[path.EVENT_LOOP]["us_per_request"] == pytest.approx(0.05e6)
    assert figures["unattributed_us_per_request"] == 0
    assert figures["waiting_samples_left_out"] == 40
