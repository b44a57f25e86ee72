"""Where a request's time goes: server CPU µs per stage of `/predict`, under load, per model.

    python -m benchmarks.path [--seconds 15] [--levels 1,32]
                              [--tracking-uri URI --label resnet18]

The service is started as a user starts it (`bentoml serve service:Localization`, 2 workers,
default settings) in its own BentoML home with the model imported from the registry. Bodies are
`iq_b64` captures of the served model's spec with `cache_enabled: false`; the load generator is
`wrk` (`benchmarks/peers/run.py`'s runner and `wrk_post.lua`; 2 threads, 1 at c=1) on the same
machine. After a warm-up, at each concurrency level three windows of `--seconds` each:

1. plain: no profiler, for the cost of the two below;
2. Python frames: `py-spy record --nonblocking` on each worker (the process is never paused, so
   the figures are the server's own). The stage table comes from this window;
3. native frames: `py-spy record --native`, which py-spy only does in blocking mode (each sample
   stops the worker while its native stack is unwound), at a lower rate; it shows what Python
   frames cannot (garbage collection, syscalls, the C libraries' own functions) and what it
   costs the server is reported beside it.

Every sample is attributed to one stage by its stack (`STRONG`, then `WEAK` rules below: the
innermost frame that a strong rule matches wins; a stack with none goes to its innermost weak
match; else "other", whose top frames are listed). Per worker, a stage's share of the worker's
samples times the worker's CPU seconds (psutil, same window) is the stage's CPU time; summed over
workers and divided by the requests wrk completed, it is µs per request. Waiting in the batch
queue is wall time, not CPU: it comes from the service's own `rfloc_batch_queue_wait_seconds`
(and its own stage and GC-pause timers) over the same window.

Then, in this process and without a server, the median µs of each compute stage for one request
and per sample of a batch of 8 (decode, request validation, preprocessing, ONNX Runtime, the
quality verdict, `build_predictions`, `model_dump_json`).

Writes `path[-label].json` and `.md`.
"""

from __future__ import annotations

import os

# One BLAS thread (the in-process timers), set before numpy is first imported, as the service
# and its benchmarks run.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402

from benchmarks.compare import (  # noqa: E402
    RESULTS,
    bentoml_serve,
    free_port,
    import_model_into,
    model_spec,
    run_meta,
    scrape,
    tree_cpu_seconds,
    write_results,
)
from benchmarks.peers.run import wrk  # noqa: E402
from utils.api.decoding import encode_capture  # noqa: E402
from utils.config import PROJECT_ROOT, get_settings  # noqa: E402
from utils.dsp.synthetic import generate_scenes  # noqa: E402

WORKERS = 2

# --- stages -------------------------------------------------------------------------------------

EVENT_LOOP = "event loop (uvloop's C loop: polling, socket reads, task steps)"
HTTP = "HTTP parse and socket I/O (uvicorn, httptools, http_protocol.py)"
BENTO_MIDDLEWARE = "BentoML middleware (metrics, tracing, access log, timeout)"
DISPATCH = "BentoML dispatch and IO descriptors (starlette app, api_endpoint, serde)"
VALIDATION = "validation (request JSON parse + pydantic, one pass)"
SERVICE = "service method and pipeline (service.py, pipeline.py)"
DECODE = "decode (iq_b64: base64, checks, canonical capture)"
CACHE = "cache key and lookup"
HAND_OFF = "hand-off to the batcher (greedy, futures, worker thread)"
PREPROCESSING = "preprocessing (mel: scipy, numpy)"
ONNX = "ONNX Runtime"
RUNTIME = "model runtime glue (runtime.py: slicing, stacking, outputs)"
QUALITY = "quality verdict (features + assess)"
RESPONSE = "ellipse and response building (utils/geo, responses.py)"
SERIALIZATION = "serialization (model_dump_json, json)"
METRICS_BENTO = "metrics: BentoML's (prometheus_client)"
METRICS_OURS = "metrics: the service's rfloc_* (prometheus_client)"
LOGGING = "logging (other than BentoML's access log)"
GC = "garbage collection (native frames; Python frames see only collector.py's)"
OTHER = "other"
#: Native samples of a thread that waits (the GIL, a condition, epoll): not CPU, left out.
WAITING = "off-CPU wait (native frames; left out)"


@dataclass(frozen=True)
class Rule:
    """A frame matches when its short file name matches `file` and its function `func`."""

    stage: str
    file: str = ""
    func: str = ""

    def matches(self, func: str, file: str) -> bool:
        return bool(
            (not self.file or re.search(self.file, file))
            and (not self.func or re.search(self.func, func))
        )


def asgi_layer_files() -> list[tuple[str, str]]:
    """(short file, class name) of each of the service's ASGI layers, outermost first: read
    from `utils/asgi/stack.py` as `service.py` builds it."""
    from utils.api.body_limits import RouteBodyLimits
    from utils.asgi import stack
    from utils.serving.arrivals import Arrivals

    settings = get_settings()
    limits = RouteBodyLimits(
        settings.max_request_bytes, settings.max_samples_per_capture, settings.max_predict_bytes
    )
    out = []
    for cls, _ in stack.layers(settings, limits, Arrivals()):
        module = sys.modules[cls.__module__].__file__ or ""
        out.append((short_file(module), cls.__name__))
    return out


def layer_stage(name: str) -> str:
    return f"ASGI layer: {name}"


def strong_rules(layers: Sequence[tuple[str, str]]) -> list[Rule]:
    """Rules for frames that say what a sample is for; the innermost match wins (first rule
    that matches a frame decides its stage)."""
    rules = [
        Rule(GC, r"libpython", r"^(gc_collect|collect|gc_collect_main|gc_collect_with_callback)"),
        Rule(GC, r"^utils/serving/collector\.py$"),
        Rule(METRICS_OURS, r"^prometheus_client/"),  # split by caller in `classify`
        Rule(METRICS_OURS, r"^utils/serving/metrics\.py$"),
        Rule(ONNX, r"^onnxruntime/"),
        Rule(ONNX, r"libonnxruntime|onnxruntime_pybind"),
        # the amplitude bound is the decoder's check (decoding.py calls it): its caller decides
        Rule(PREPROCESSING, r"^utils/dsp/(preprocessing|mel|feature_spec)\.py$", r"^(?!peak_)"),
        Rule(QUALITY, r"^utils/model/quality\.py$"),
        Rule(RUNTIME, r"^utils/model/runtime\.py$", r"^ModelRuntime\.predict$"),
        Rule(HAND_OFF, r"^utils/model/runtime\.py$", r"^RawPredictions\.(items|stack)$"),
        Rule(RESPONSE, r"^utils/geo/"),
        Rule(RESPONSE, r"^utils/api/responses\.py$"),
        Rule(RESPONSE, r"^pyproj/"),
        Rule(DECODE, r"^utils/api/decoding\.py$"),
        Rule(DECODE, r"^pybase64/"),
        Rule(CACHE, r"^utils/serving/cache\.py$"),
        Rule(CACHE, r"^utils/api/cached_answers\.py$"),
        Rule(HAND_OFF, r"^utils/serving/(greedy|batching|arrivals|departure|on_loop)\.py$"),
        Rule(HAND_OFF, r"^utils/api/pipeline\.py$", r"^(infer_jobs|infer_batch|batcher_dispatch)"),
        Rule(HAND_OFF, r"^anyio/"),
        Rule(SERIALIZATION, r"^pydantic/", r"model_dump_json|model_dump$|dump_json|to_json"),
        Rule(SERIALIZATION, r"^json/", r"dumps|encode|iterencode"),
        Rule(VALIDATION, r"^pydantic/", r"validate"),
        Rule(SERVICE, r"^service\.py$"),
        Rule(SERVICE, r"^utils/api/(pipeline|iq_json|errors|schemas)\.py$"),
        Rule(HTTP, r"^utils/asgi/http_protocol\.py$"),
        Rule(HTTP, r"^uvicorn/protocols/"),
        Rule(HTTP, r"^httptools/"),
        Rule(BENTO_MIDDLEWARE, r"^bentoml/_internal/server/http/"),
        Rule(BENTO_MIDDLEWARE, r"^opentelemetry/"),
        Rule(BENTO_MIDDLEWARE, r"^_bentoml_impl/server/app\.py$", r"^ContextMiddleware"),
        Rule(BENTO_MIDDLEWARE, r"^starlette/middleware/errors\.py$"),
        # BentoML's request-metric labels by route (the service's replacement of its raw path)
        Rule(BENTO_MIDDLEWARE, r"^utils/asgi/route_labels\.py$"),
    ]
    rules += [Rule(layer_stage(name), "^" + re.escape(file) + "$") for file, name in layers]
    rules += [
        # logging and its filters by caller: BentoML's access log is its middleware's
        Rule(LOGGING, r"^logging/"),
        Rule(LOGGING, r"^utils/serving/log_filters\.py$"),
        Rule(LOGGING, r"^bentoml/_internal/log\.py$"),
        Rule(DISPATCH, r"^starlette/"),
        Rule(DISPATCH, r"^_bentoml_impl/(?!worker/)"),  # not the worker's start-up frames
        Rule(DISPATCH, r"^_bentoml_sdk/"),
        Rule(DISPATCH, r"^bentoml/"),
    ]
    return rules


#: Rules for frames that only say where a sample is when nothing more telling is on its stack
#: (uvloop's C loop, libc's socket calls): the innermost match wins.
WEAK = [
    Rule(HTTP, r"libc\.so", r"^(write|writev|send|sendmsg|sendto|read|readv|recv|recvmsg)$"),
    Rule(HTTP, r"", r"^(UVStream|uv__read|uv__write|uv__stream|uv_try_write)"),
    Rule(EVENT_LOOP, r"^asyncio/runners\.py$"),
    Rule(EVENT_LOOP, r"^uvloop/"),
    Rule(EVENT_LOOP, r"^(loop\.c|core\.c|linux\.c|stream\.c|uv-common\.c|.*\.h)$"),
    Rule(EVENT_LOOP, r"^uvicorn/"),
]

#: Native functions of a thread that waits rather than runs (checked on the innermost frames).
WAIT_FUNCS = re.compile(
    r"^(pthread_cond_(timed|clock)?wait|sem_(timed|clock)?wait|__?futex|futex_|"
    r"epoll_p?wait|poll|ppoll|select|pselect|nanosleep|clock_nanosleep|take_gil|"
    r"PyCOND_TIMEDWAIT|PyThread_acquire_lock|lock_PyThread_acquire_lock|__lll_lock_wait|"
    r"do_futex_wait)"
)


def short_file(path: str) -> str:
    """A frame's file as a name without this machine's paths: relative to site-packages, the
    project or the standard library; a native library or C source by its base name."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    root = str(PROJECT_ROOT) + os.sep
    if path.startswith(root) and f"{os.sep}.venv{os.sep}" not in path:
        return path[len(root) :]
    stdlib = sysconfig.get_paths()["stdlib"] + os.sep
    if path.startswith(stdlib):
        return path[len(stdlib) :]
    return os.path.basename(path) if os.path.isabs(path) else path


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def parse_frame(text: str) -> tuple[str, str, str]:
    """py-spy's `function (file:line)` as (function, short file, line)."""
    m = _FRAME.match(text)
    if m is None:
        return text, "", ""
    return m["func"], short_file(m["file"]), m["line"] or ""


def read_raw(path: Path) -> collections.Counter[tuple[str, ...]]:
    """py-spy's raw (collapsed) output: stack (outermost first) -> samples. The leading
    `thread (<tid>): <name>` frame that `--threads` adds becomes `thread: <name> #<tid>`."""
    out: collections.Counter[tuple[str, ...]] = collections.Counter()
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        m = re.match(r"^thread \((\w+)\)(?:: (.*))?$", frames[0]) if frames else None
        if m:
            frames[0] = f"thread: {m[2] or 'unnamed'} #{m[1]}"
        out[tuple(frames)] += int(count)
    return out


def thread_of(stack: Sequence[str]) -> tuple[str, int | None]:
    """(name, OS thread id) of a stack's thread frame, ("", None) without one."""
    if not stack or not stack[0].startswith("thread: "):
        return "", None
    name, _, tid = stack[0].removeprefix("thread: ").rpartition(" #")
    if not name:
        return tid, None
    return name, int(tid) if tid.isdigit() else None


class Classifier:
    """Stack -> stage, by the rules above."""

    def __init__(self, layers: Sequence[tuple[str, str]]) -> None:
        self.strong = strong_rules(layers)
        self.cache: dict[str, tuple[str, str, str, str | None, bool]] = {}

    def _frame(self, text: str) -> tuple[str, str, str, str | None, bool]:
        """(function, short file, line, strong stage or None, waits)."""
        hit = self.cache.get(text)
        if hit is None:
            func, file, line = parse_frame(text)
            stage = next((r.stage for r in self.strong if r.matches(func, file)), None)
            hit = (func, file, line, stage, bool(WAIT_FUNCS.match(func)))
            self.cache[text] = hit
        return hit

    def classify(self, stack: Sequence[str]) -> str:
        return self.decide(stack)[0]

    def decide(self, stack: Sequence[str]) -> tuple[str, str]:
        """(stage, the frame that decided it as `function (file)`, or "")."""
        frames = [self._frame(t) for t in stack if not t.startswith("thread: ")]

        def named(f: tuple[str, str, str, str | None, bool]) -> str:
            return f"{f[0]} ({f[1]})"

        for f in frames[-3:]:
            if f[4]:
                return WAITING, named(f)
        for f in frames:
            if f[3] == GC and "libpython" in f[1]:
                return GC, named(f)  # a collection runs wherever an allocation triggers it
        for depth in range(len(frames) - 1, -1, -1):
            stage = frames[depth][3]
            if stage is None:
                continue
            if stage in (METRICS_OURS, LOGGING):  # whose: the first caller outside them
                caller = next(
                    (f for f in reversed(frames[:depth]) if f[3] not in (stage, None)), None
                )
                if caller is not None and (
                    caller[3] == BENTO_MIDDLEWARE
                    or caller[1].startswith(("bentoml/", "_bentoml_impl/", "_bentoml_sdk/"))
                ):
                    bento = METRICS_BENTO if stage == METRICS_OURS else BENTO_MIDDLEWARE
                    return bento, named(caller)
            return stage, named(frames[depth])
        for f in reversed(frames):
            weak = next((r.stage for r in WEAK if r.matches(f[0], f[1])), None)
            if weak is not None:
                return weak, named(f)
        return OTHER, ""


def top_frames(stack: Sequence[str], depth: int = 3) -> str:
    """The innermost `depth` frames of a stack, innermost last, without machine paths."""
    shown = []
    for text in stack[-depth:]:
        if text.startswith("thread: "):
            shown.append(f"thread: {thread_of([text])[0]}")
            continue
        func, file, line = parse_frame(text)
        shown.append(f"{func} ({file}:{line})" if line else f"{func} ({file})")
    return " ← ".join(reversed(shown))


@dataclass
class Attribution:
    """One worker's samples: per thread and stage; the innermost frames and the deciding
    function seen in each stage; samples per thread name."""

    by_thread: dict[int | None, collections.Counter[str]]
    frames: dict[str, collections.Counter[str]]
    deciders: dict[str, collections.Counter[str]]
    threads: collections.Counter[str]
    names: dict[int, str]

    @property
    def stages(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for counts in self.by_thread.values():
            out.update(counts)
        return out


def attribute(samples: collections.Counter[tuple[str, ...]], classifier: Classifier) -> Attribution:
    out = Attribution({}, {}, {}, collections.Counter(), {})
    for stack, n in samples.items():
        stage, decider = classifier.decide(stack)
        name, tid = thread_of(stack)
        out.by_thread.setdefault(tid, collections.Counter())[stage] += n
        if tid is not None:
            out.names[tid] = name
        if stage == WAITING:
            continue
        out.frames.setdefault(stage, collections.Counter())[top_frames(stack)] += n
        out.deciders.setdefault(stage, collections.Counter())[decider] += n
        if name:
            out.threads[name] += n
    return out


def thread_weights(
    found: Attribution, worker_cpu: float, threads_cpu: dict[int, float] | None
) -> tuple[dict[int | None, float], float]:
    """CPU seconds per sample of each sampled thread, and the worker's CPU left unattributed.

    A thread psutil timed gets its own CPU spread over its own samples: py-spy counts a thread
    that is runnable but waits for a core as busy, so on shared cores raw sample counts would
    shift time between threads (a loop thread woken while the model's thread computes). What
    the timed threads do not account for (threads gone before the window ended, or not timed)
    is spread over the other threads' samples; a worker with no sample leaves its CPU
    unattributed."""
    busy = {
        tid: sum(n for stage, n in counts.items() if stage != WAITING)
        for tid, counts in found.by_thread.items()
    }
    busy = {tid: n for tid, n in busy.items() if n > 0}
    timed = {
        tid: threads_cpu[tid]
        for tid in busy
        if tid is not None and threads_cpu is not None and threads_cpu.get(tid, 0.0) > 0
    }
    timed_total = sum(timed.values())
    if timed_total > worker_cpu > 0:  # psutil's tick rounding: never more than the process
        timed = {tid: c * worker_cpu / timed_total for tid, c in timed.items()}
        timed_total = worker_cpu
    rest = max(0.0, worker_cpu - timed_total)
    untimed = sum(n for tid, n in busy.items() if tid not in timed)
    weights = {tid: timed[tid] / busy[tid] for tid in timed}
    if untimed:
        weights.update({tid: rest / untimed for tid in busy if tid not in timed})
        rest = 0.0
    return weights, rest


# --- the server -----------------------------------------------------------------------------


def worker_processes(pid: int) -> list[psutil.Process]:
    """The `bentoml serve` process's workers: children running `_bentoml_impl.worker`."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return sorted(out, key=lambda p: p.pid)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def thread_cpu_seconds(proc: psutil.Process) -> dict[int, float]:
    """User + system CPU seconds of each of a process's threads so far, by OS thread id."""
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def metric_delta(
    before: dict[tuple[str, str], float],
    after: dict[tuple[str, str], float],
    name: str,
    **labels: str,
) -> float:
    """The change of `name` over a window, summed over the series whose labels include
    `labels`."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for key, value in after.items():
        if key[0] != name or not all(w in key[1] for w in wanted):
            continue
        total += value - before.get(key, 0.0)
    return total


def batching_choice(log: Path) -> list[str]:
    """Each worker's start-up line on batching (queue delay, loop or thread): `auto` decides
    from a measurement at load, so it is recorded with the figures."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"\[entry_service:[^:]+:(\d+)\] serving .*?cache, (.*)$", line)
        if m:
            out.append(f"worker {m[1]}: {m[2]}")
    return out


# --- one window ---------------------------------------------------------------------------------


def py_spy_binary() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: pip install -r requirements/load.txt")
    return found


class Profiler:
    """py-spy recording one worker until stopped (SIGINT makes it write its file)."""

    def __init__(self, pid: int, out: Path, mode: str, rate: int) -> None:
        args = [py_spy_binary(), "record", "--pid", str(pid), "--rate", str(rate)]
        args += ["--format", "raw", "--threads", "--full-filenames", "-o", str(out)]
        args += ["--nonblocking"] if mode == "python" else ["--native"]
        self.out = out
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "Sampling process" in line:
                self.started.set()
        self.started.set()

    def stop(self) -> dict[str, Any]:
        try:  # py-spy's own CPU: it shares the cores with the server and the load generator
            times = psutil.Process(self.proc.pid).cpu_times()
            own_cpu = times.user + times.system
        except psutil.Error:
            own_cpu = 0.0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        summary = next((x for x in self.lines if "Samples:" in x), "")
        m = re.search(r"Samples: (\d+) Errors: (\d+)", summary)
        behind = [x for x in self.lines if "behind in sampling" in x]
        return {
            "cpu_s": round(own_cpu, 2),
            "samples": int(m[1]) if m else 0,
            "errors": int(m[2]) if m else 0,
            "behind_warnings": len(behind),
            "max_behind_s": max(
                (float(re.search(r"([\d.]+)s behind", x)[1]) for x in behind), default=0.0
            ),
        }


def window(
    url: str,
    base: str,
    bodies: list[Path],
    connections: int,
    seconds: int,
    workers: list[psutil.Process],
    serve_pid: int,
    profile: str | None,
    rate: int,
    work: Path,
    classifier: Classifier,
) -> dict[str, Any]:
    """One `wrk` run at `connections`, profiled or not: throughput, every worker's CPU over
    the run, the service's own timers, and (profiled) the stage attribution."""
    profilers = []
    if profile is not None:
        for i, proc in enumerate(workers):
            out = work / f"c{connections}-{profile}-w{i}.raw"
            profilers.append(Profiler(proc.pid, out, profile, rate))
        for p in profilers:
            p.started.wait(timeout=15)
        time.sleep(0.3)
    metrics_before = scrape(base)
    threads_before = [thread_cpu_seconds(p) for p in workers]
    cpu_before = [cpu_seconds(p) for p in workers]
    tree_before = tree_cpu_seconds(serve_pid)
    figures = wrk(url, bodies, connections, seconds, 2, 30)
    cpu = [cpu_seconds(p) - b for p, b in zip(workers, cpu_before, strict=True)]
    threads_cpu = [
        {tid: c - before.get(tid, 0.0) for tid, c in thread_cpu_seconds(p).items()}
        for p, before in zip(workers, threads_before, strict=True)
    ]
    tree = tree_cpu_seconds(serve_pid) - tree_before
    metrics_after = scrape(base)
    spies = [p.stop() for p in profilers]
    requests = figures["requests"]
    duration = figures["duration_us"] / 1e6
    row: dict[str, Any] = {
        "profile": profile or "none",
        "concurrency": connections,
        "requests": requests,
        "seconds": round(duration, 2),
        "rps": round(requests / duration, 1) if duration else 0.0,
        "p50_ms": round(figures["p50_us"] / 1000, 2),
        "p99_ms": round(figures["p99_us"] / 1000, 2),
        "non_2xx": figures["status"],
        "errors": figures["connect"] + figures["read"] + figures["write"] + figures["timeout"],
        "worker_cpu_s": [round(c, 3) for c in cpu],
        "cpu_ms_per_request": round(1000 * sum(cpu) / requests, 3) if requests else None,
        "tree_cpu_ms_per_request": round(1000 * tree / requests, 3) if requests else None,
    }
    row.update(service_timers(metrics_before, metrics_after, requests))
    if profile is not None:
        row["py_spy"] = {"mode": profile, "rate_hz": rate, "workers": spies}
        recordings = [read_raw(p.out) for p in profilers]
        row.update(stage_figures(recordings, cpu, requests, classifier, threads_cpu))
    return row


def service_timers(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], requests: int
) -> dict[str, Any]:
    """The service's own wall-clock timers over the window, per request."""
    per = max(1, requests)
    waits = metric_delta(before, after, "rfloc_batch_queue_wait_seconds_count")
    wait_s = metric_delta(before, after, "rfloc_batch_queue_wait_seconds_sum")
    batches = metric_delta(before, after, "rfloc_batch_size_count")
    samples = metric_delta(before, after, "rfloc_batch_size_sum")
    gc_pauses = metric_delta(before, after, "rfloc_gc_pause_seconds_count")
    gc_s = metric_delta(before, after, "rfloc_gc_pause_seconds_sum")
    stage = {
        s: metric_delta(before, after, "rfloc_stage_seconds_sum", stage=s)
        for s in ("decode", "preprocess", "model")
    }
    return {
        "queue_wait_ms_mean": round(1000 * wait_s / waits, 3) if waits else None,
        "queue_waits": int(waits),
        "mean_batch": round(samples / batches, 2) if batches else None,
        "gc_pauses": int(gc_pauses),
        "gc_pause_us_per_request": round(1e6 * gc_s / per, 1),
        # the handler's start to the decoded capture (per request); preprocessing and the model
        # per batch, shared by the batch's requests
        "timer_us_per_request": {k: round(1e6 * v / per, 1) for k, v in stage.items()},
    }


def stage_figures(
    recordings: list[collections.Counter[tuple[str, ...]]],
    cpu: list[float],
    requests: int,
    classifier: Classifier,
    threads_cpu: list[dict[int, float]] | None = None,
) -> dict[str, Any]:
    """µs per request of each stage: per worker thread, its stage's share of the thread's
    samples times the thread's CPU seconds (`thread_weights`); summed over threads and
    workers, over the requests served."""
    stage_s: collections.Counter[str] = collections.Counter()
    samples: collections.Counter[str] = collections.Counter()
    frames: dict[str, collections.Counter[str]] = {}
    deciders: dict[str, collections.Counter[str]] = {}
    waiting = 0
    unattributed = 0.0  # CPU no sample stands for (an idle worker at c=1)
    per_worker = []
    for i, (recording, worker_cpu) in enumerate(zip(recordings, cpu, strict=True)):
        found = attribute(recording, classifier)
        weights, rest = thread_weights(
            found, worker_cpu, threads_cpu[i] if threads_cpu is not None else None
        )
        unattributed += rest
        for tid, counts in found.by_thread.items():
            waiting += counts.get(WAITING, 0)
            for stage, n in counts.items():
                if stage == WAITING or tid not in weights:
                    continue
                stage_s[stage] += weights[tid] * n
                samples[stage] += n
        timed = threads_cpu[i] if threads_cpu is not None else {}
        per_worker.append(
            {
                "samples": sum(found.stages.values()) - found.stages.get(WAITING, 0),
                "threads": dict(found.threads),
                # CPU of each thread over the window (threads py-spy saw, by name)
                "thread_cpu_s": {
                    f"{found.names.get(tid, 'not sampled')} #{tid}": round(c, 3)
                    for tid, c in timed.items()
                    if c > 0
                },
                "cpu_s": round(worker_cpu, 3),
            }
        )
        for stage, counts in found.frames.items():
            frames.setdefault(stage, collections.Counter()).update(counts)
        for stage, counts in found.deciders.items():
            deciders.setdefault(stage, collections.Counter()).update(counts)
    cpu_total = sum(stage_s.values())
    per = max(1, requests)
    all_samples = sum(samples.values())
    files: dict[str, collections.Counter[str]] = {}
    for stage, counts in deciders.items():
        for decider, n in counts.items():
            file = decider.rpartition(" (")[2].rstrip(")") if decider else ""
            files.setdefault(stage, collections.Counter())[file] += n

    def top(stage: str, n: int, source: dict[str, collections.Counter[str]]) -> list[Any]:
        counts = source.get(stage, collections.Counter())
        return [
            {"frames": k, "samples": v, "share": round(v / all_samples, 4)}
            for k, v in counts.most_common(n)
        ]

    def detail(stage: str, seconds: float) -> dict[str, Any]:
        # the files and functions (the innermost frame a rule named) and the innermost frames;
        # more of them for the stages that matter
        share = seconds / cpu_total if cpu_total > 0 else 0.0
        return {
            "by_file": top(stage, 3 if share >= 0.01 else 1, files),
            "by_function": top(stage, 5 if share >= 0.01 else 1, deciders),
            "top_frames": top(stage, 3 if share >= 0.03 else 0, frames),
        }

    return {
        "stages": {
            stage: {
                "samples": samples[stage],
                "us_per_request": round(1e6 * s / per, 1),
                "share": round(s / cpu_total, 4) if cpu_total else 0.0,
                **detail(stage, s),
            }
            for stage, s in stage_s.most_common()
        },
        "samples": all_samples,
        "unattributed_us_per_request": round(1e6 * unattributed / per, 1),
        "waiting_samples_left_out": waiting,
        "samples_per_worker": per_worker,
        "other_top": top(OTHER, 10, frames),
    }


# --- in-process timers --------------------------------------------------------------------------


def median_us(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


def compute_timers(model_dir: Path, texts: list[str], repeats: int) -> list[dict[str, Any]]:
    """Median µs of each compute stage in this process, for one request and per sample of a
    batch of 8: the service's own functions, called as its request path calls them."""
    from benchmarks.peers.compute import load_runtime

    runtime = load_runtime(model_dir)
    rows: list[dict[str, Any]] = []
    for batch in (1, 8):
        items = (texts * (batch // len(texts) + 1))[:batch]
        for name, fn in stage_calls(runtime, items):
            us = median_us(fn, repeats)
            rows.append({"stage": name, "batch": batch, "us_per_sample": round(us / batch, 1)})
    return rows


def stage_calls(runtime: Any, texts: list[str]) -> list[tuple[str, Callable[[], object]]]:
    """Each compute stage of `/predict` for the captures `texts` (one batch), as a call."""
    import numpy as np

    from utils.api.decoding import decode_iq_b64
    from utils.api.responses import build_predictions, check_outputs
    from utils.api.schemas import PredictRequest
    from utils.dsp.preprocessing import preprocess_many
    from utils.geo.ellipse import ONE_SIGMA_PROBABILITY, ellipse_axes, model_uncertainty_to_metres
    from utils.model.contract import INPUT_NAME
    from utils.model.quality import (
        assess,
        band_spread_db,
        channel_power_db,
        distinct_frames,
        max_amplitude,
    )

    spec = runtime.spec
    limit = get_settings().max_samples_per_capture
    bound = max_amplitude(spec)
    bodies = [json.dumps({"iq_b64": t, "cache_enabled": False}).encode() for t in texts]
    captures = [decode_iq_b64(t, spec, limit) for t in texts]
    mel = preprocess_many(captures, spec, bound)
    raw = runtime.predict(captures, validated=True)

    def build() -> list[Any]:
        return build_predictions(
            raw,
            spec=spec,
            envelope=runtime.envelope,
            confidence_level=0.95,
            include_geojson=False,
            model_version="bench",
            inference_time_ms=0.0,
            session_id=None,
        )

    responses = build()

    def quality_features() -> None:
        # as `ModelRuntime.predict` computes them for the verdict
        cut = [c[..., : spec.samples_per_capture] for c in captures]
        np.stack([channel_power_db(c.reshape(-1, c.shape[-1])) for c in cut])
        band_spread_db(mel, spec)
        np.array([distinct_frames(c.shape[-1], spec) for c in cut])

    def verdict() -> None:
        # as `build_predictions` reaches `assess`
        check_outputs(raw)
        lat = np.clip(raw.positions[:, 0], -90.0, 90.0)
        lon = (raw.positions[:, 1] + 180.0) % 360.0 - 180.0
        sx, sy, rho = model_uncertainty_to_metres(lat, raw.uncertainties, spec.uncertainty_units)
        major, _, _, _ = ellipse_axes(sx, sy, rho, ONE_SIGMA_PROBABILITY)
        assess(lat, lon, major, raw.power_db, raw.spread_db, raw.frames, runtime.envelope, spec)

    return [
        (
            "validation: PredictRequest.model_validate_json of the body",
            lambda: [PredictRequest.model_validate_json(b) for b in bodies],
        ),
        ("decode: decode_iq_b64", lambda: [decode_iq_b64(t, spec, limit) for t in texts]),
        ("preprocessing: preprocess_many", lambda: preprocess_many(captures, spec, bound)),
        (
            "ONNX: session.run",
            lambda: runtime.session.run(runtime.output_names, {INPUT_NAME: mel}),
        ),
        ("quality features (in runtime.predict)", quality_features),
        ("quality verdict: assess (with its ellipse inputs)", verdict),
        (
            "runtime.predict (preprocessing + quality features + ONNX)",
            lambda: runtime.predict(captures, validated=True),
        ),
        ("build_predictions (ellipse + verdict + response models)", build),
        ("serialization: model_dump_json", lambda: [r.model_dump_json() for r in responses]),
    ]


# --- the report -------------------------------------------------------------------------------


def stage_order(layers: Sequence[tuple[str, str]]) -> list[str]:
    """Stages in the order a request meets them."""
    return [
        EVENT_LOOP,
        HTTP,
        BENTO_MIDDLEWARE,
        *(layer_stage(name) for _, name in layers),
        DISPATCH,
        VALIDATION,
        SERVICE,
        DECODE,
        CACHE,
        HAND_OFF,
        PREPROCESSING,
        ONNX,
        RUNTIME,
        QUALITY,
        RESPONSE,
        SERIALIZATION,
        METRICS_BENTO,
        METRICS_OURS,
        LOGGING,
        GC,
        OTHER,
    ]


def stage_groups(layers: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """The stages in a few groups, for the summary: whose code the time is spent in."""
    return [
        ("HTTP server (uvloop, uvicorn, httptools)", [EVENT_LOOP, HTTP]),
        (
            "BentoML (its middlewares, dispatch and IO descriptors, its metrics)",
            [BENTO_MIDDLEWARE, DISPATCH, METRICS_BENTO],
        ),
        ("request JSON parse + validation (pydantic)", [VALIDATION]),
        ("the service's ASGI layers", [layer_stage(name) for _, name in layers]),
        (
            "the service's request path (service.py, pipeline, batcher hand-off, its metrics)",
            [SERVICE, CACHE, HAND_OFF, METRICS_OURS, LOGGING],
        ),
        (
            "compute (decode, preprocessing, ONNX, quality, ellipse and response, serialization)",
            [DECODE, PREPROCESSING, ONNX, RUNTIME, QUALITY, RESPONSE, SERIALIZATION],
        ),
        ("garbage collection and other", [GC, OTHER]),
    ]


def group_figures(row: dict[str, Any] | None, stages: list[str]) -> tuple[float, float]:
    """(µs per request, share) of a group of stages in one window."""
    if row is None or "stages" not in row:
        return 0.0, 0.0
    hits = [row["stages"][s] for s in stages if s in row["stages"]]
    return sum(h["us_per_request"] for h in hits), sum(h["share"] for h in hits)


def _level(result: dict[str, Any], concurrency: int, profile: str) -> dict[str, Any] | None:
    for row in result["windows"]:
        if row["concurrency"] == concurrency and row["profile"] == profile:
            return row
    return None


def _us(row: dict[str, Any] | None, stage: str) -> str:
    if row is None or "stages" not in row:
        return ""
    hit = row["stages"].get(stage)
    return f"{hit['us_per_request']:.0f}" if hit else "0"


def _share(row: dict[str, Any] | None, stage: str) -> str:
    if row is None or "stages" not in row:
        return ""
    hit = row["stages"].get(stage)
    return f"{100 * hit['share']:.1f} %" if hit else "0 %"


#: Compute stages and the in-process timers that time the same work (per sample).
TIMED = (
    (VALIDATION, ("validation: PredictRequest.model_validate_json of the body",)),
    (DECODE, ("decode: decode_iq_b64",)),
    (PREPROCESSING, ("preprocessing: preprocess_many",)),
    (ONNX, ("ONNX: session.run",)),
    (QUALITY, ("quality features (in runtime.predict)", "quality verdict: assess")),
    (SERIALIZATION, ("serialization: model_dump_json",)),
)


def compute_three_ways(
    result: dict[str, Any],
    lo: dict[str, Any] | None,
    hi: dict[str, Any] | None,
    native_hi: dict[str, Any] | None,
    low: int,
    high: int,
) -> list[str]:
    """The compute stages as sampled in the server and as timed in this process, side by
    side: where sampling a thread that shares its core cannot split time finely, the timers
    say what the work itself costs."""

    def timer(prefixes: tuple[str, ...], batch: int) -> str:
        rows = [
            r["us_per_sample"]
            for r in result["timers"]
            if r["batch"] == batch and r["stage"].startswith(prefixes)
        ]
        return f"{sum(rows):.0f}" if rows else ""

    lines = [
        "",
        "## Compute stages, sampled in the server and timed in-process (µs per request or sample)",
        "",
        f"| stage | c={low}, Python frames | in-process, one request | c={high}, Python frames "
        f"| c={high}, native frames | in-process, per sample of a batch of 8 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage, prefixes in TIMED:
        lines.append(
            f"| {stage} | {_us(lo, stage)} | {timer(prefixes, 1)} | {_us(hi, stage)} | "
            f"{_us(native_hi, stage)} | {timer(prefixes, 8)} |"
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    levels = meta["levels"]
    low, high = min(levels), max(levels)
    lines = [
        f"# Where a request's time goes ({meta['label']} model)",
        "",
        f"Model `{meta['model']}`; `bentoml serve service:Localization`, {meta['workers']} "
        f"workers, default settings; {meta['cpus']} CPUs shared with the load generator "
        f"(`wrk`, 2 threads, 1 at c=1); body `iq_b64` {meta['body_kb']} kB "
        f"({meta['shape']}), `cache_enabled: false`; {meta['seconds']} s per window after a "
        f"{meta['warmup_seconds']} s warm-up. {meta['timestamp']}.",
        "",
        "Batching as each worker chose it at start-up: " + "; ".join(meta["batching"]) + ".",
        "",
        "Server CPU µs per request, by group and by stage (py-spy `--nonblocking`, Python "
        f"frames, {meta['rate_hz']} Hz, every worker; a stage's share of a worker's samples × "
        "the worker's CPU seconds over the window ÷ requests served). The stage table's last "
        f"column is the same attribution from native frames (`--native`, blocking, "
        f"{meta['native_rate_hz']} Hz, c={high}), which alone sees garbage collection.",
        "",
        f"| stage | c={low} µs/request | c={high} µs/request | c={high} share | "
        f"c={high} share, native frames |",
        "|---|---:|---:|---:|---:|",
    ]
    lo, hi = _level(result, low, "python"), _level(result, high, "python")
    plain_lo, plain_hi = _level(result, low, "none"), _level(result, high, "none")
    native_hi = _level(result, high, "native")
    summary = [
        f"| group | c={low} µs/request | c={high} µs/request | c={high} share |",
        "|---|---:|---:|---:|",
    ]
    for name, stages in result["stage_groups"]:
        lo_us, _ = group_figures(lo, stages)
        hi_us, hi_share = group_figures(hi, stages)
        summary.append(f"| {name} | {lo_us:.0f} | {hi_us:.0f} | {100 * hi_share:.1f} % |")
    lo_total, hi_total = (0.0 if r is None else 1000 * r["cpu_ms_per_request"] for r in (lo, hi))
    summary.append(f"| **total** | {lo_total:.0f} | {hi_total:.0f} | 100 % |")
    lines[-3:-3] = ["", *summary]
    for stage in result["stage_order"]:
        cells = [_us(lo, stage), _us(hi, stage), _share(hi, stage), _share(native_hi, stage)]
        if all(c in ("0", "0 %", "") for c in cells):
            continue
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")

    def total(row: dict[str, Any] | None, key: str) -> str:
        return "" if row is None or row.get(key) is None else str(row[key])

    lines += [
        f"| **total: server CPU ms per request (workers)** | {total(lo, 'cpu_ms_per_request')} | "
        f"{total(hi, 'cpu_ms_per_request')} | 100 % | |",
        f"| server CPU ms per request, same level without the profiler | "
        f"{total(plain_lo, 'cpu_ms_per_request')} | {total(plain_hi, 'cpu_ms_per_request')} | "
        "| |",
        f"| req/s | {total(lo, 'rps')} | {total(hi, 'rps')} | | |",
        f"| p50 / p99 ms | {total(lo, 'p50_ms')} / {total(lo, 'p99_ms')} | "
        f"{total(hi, 'p50_ms')} / {total(hi, 'p99_ms')} | | |",
        "",
        "## Wall clock, from the service's own timers (same windows)",
        "",
        f"| | c={low} | c={high} |",
        "|---|---:|---:|",
        f"| waiting in the batch queue, mean ms per request (`rfloc_batch_queue_wait_seconds`)"
        f" | {total(lo, 'queue_wait_ms_mean')} | {total(hi, 'queue_wait_ms_mean')} |",
        f"| mean batch | {total(lo, 'mean_batch')} | {total(hi, 'mean_batch')} |",
        f"| garbage-collection pauses, µs per request (`rfloc_gc_pause_seconds`; inside the "
        f"stages above) | {total(lo, 'gc_pause_us_per_request')} | "
        f"{total(hi, 'gc_pause_us_per_request')} |",
    ]
    for key, label in (
        ("decode", "handler start to decoded capture"),
        ("preprocess", "preprocessing (per batch, shared)"),
        ("model", "ONNX (per batch, shared)"),
    ):
        values = ["" if r is None else str(r["timer_us_per_request"][key]) for r in (lo, hi)]
        lines.append(f"| {label}, µs per request (`rfloc_stage_seconds`) | {' | '.join(values)} |")
    lines += [
        "",
        "## What profiling costs",
        "",
        "| c | profiler | req/s | p50 ms | p99 ms | server CPU ms/request | py-spy samples "
        "(errors) | py-spy's own CPU s | py-spy behind, max s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["windows"]:
        spy = row.get("py_spy", {}).get("workers", [])
        samples = sum(s["samples"] for s in spy)
        errors = sum(s["errors"] for s in spy)
        behind = max((s["max_behind_s"] for s in spy), default=0.0)
        label = {
            "none": "none",
            "python": f"py-spy --nonblocking {row.get('py_spy', {}).get('rate_hz', '')} Hz",
            "native": f"py-spy --native (blocking) {row.get('py_spy', {}).get('rate_hz', '')} Hz",
        }[row["profile"]]
        lines.append(
            f"| {row['concurrency']} | {label} | {row['rps']} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {row['cpu_ms_per_request']} | "
            f"{f'{samples} ({errors})' if spy else ''} | "
            f"{round(sum(x['cpu_s'] for x in spy), 1) if spy else ''} | {behind if spy else ''} |"
        )
    lines += [
        "",
        "## In-process timers (no server; median µs)",
        "",
        "| stage | one request | per sample, batch of 8 |",
        "|---|---:|---:|",
    ]
    timers = result["timers"]
    for name in dict.fromkeys(r["stage"] for r in timers):
        one = next(
            (r["us_per_sample"] for r in timers if r["stage"] == name and r["batch"] == 1), ""
        )
        eight = next(
            (r["us_per_sample"] for r in timers if r["stage"] == name and r["batch"] == 8), ""
        )
        lines.append(f"| {name} | {one} | {eight} |")
    lines += compute_three_ways(result, lo, hi, native_hi, low, high)
    lines += [
        "",
        f"## The largest stages (c={high}, Python frames): the files and functions the rules "
        "named, then the innermost frames (innermost first); shares of all samples",
        "",
    ]
    for stage, hit in (hi or {}).get("stages", {}).items():
        if stage == OTHER or hit["share"] < 0.03:
            continue
        functions = ", ".join(
            f"`{f['frames']}` {100 * f['share']:.1f} %" for f in hit["by_function"][:4]
        )
        by_file = ", ".join(f"`{f['frames']}` {100 * f['share']:.1f} %" for f in hit["by_file"][:4])
        lines.append(
            f"- **{stage}** ({100 * hit['share']:.1f} %), by file: {by_file}; by function: "
            f"{functions}"
        )
        lines += [f"  - {100 * f['share']:.1f} %: `{f['frames']}`" for f in hit["top_frames"][:3]]
    lines += ["", f'## Top "other" frames (c={high}, Python frames; innermost first)', ""]
    others = (hi or {}).get("other_top", [])
    lines += [f"- {100 * o['share']:.2f} %: `{o['frames']}`" for o in others[:10]] or ["- none"]
    lines += ["", "## Reading it", ""]
    for profiled, plain in ((lo, plain_lo), (hi, plain_hi)):
        if profiled and plain and plain["cpu_ms_per_request"]:
            ratio = profiled["cpu_ms_per_request"] / plain["cpu_ms_per_request"]
            if ratio > 1.1:
                lines.append(
                    f"- At c={profiled['concurrency']} the profiled window cost {ratio:.2f}× "
                    "the server CPU per request of the same level without the profiler: "
                    "py-spy's own CPU (cost table) runs on the same cores, and the server's "
                    "work slows where they are shared. The µs of that column are inflated "
                    "by about that factor; its shares hold as far as the slow-down is even."
                )
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines)


NOTES = [
    "Stages are attributed by the innermost frame a rule names (benchmarks/path.py: "
    "`strong_rules`, then `WEAK`): a library call (numpy, scipy, pydantic-core, the standard "
    "library) counts for the stage that called it, and each ASGI layer holds its own code and "
    "what it calls that no rule names.",
    "Each worker thread's samples share out that thread's own CPU time (psutil, same window): "
    "py-spy counts a thread that is runnable but waits for a core as busy, which on 2 shared "
    "cores would move time between the event loop's thread and the batch thread.",
    "Within a thread, py-spy cannot tell running from runnable: on 2 cores shared by both "
    "workers' threads, wrk and py-spy, a thread woken (its socket, the GIL handed back after "
    "numpy, base64 or scipy released it) often waits for a core, and that wait counts for the "
    "stage it wakes into. Stages that release the GIL often can look bigger in the server than "
    "their own work: the compute table sets each beside the in-process timer of the same "
    "call, which is the work alone on an idle core.",
    "Validation and JSON parsing of the request are one pass in pydantic-core "
    "(`model_validate_json` of the whole body): they cannot be separated by sampling; the "
    "in-process timer times both together.",
    '"IO descriptors" (BentoML\'s `from_http_request`, `to_http_response`, serde) and '
    "starlette's routing and exception middlewares are one row: BentoML dispatch; the pydantic "
    "parse they call is validation, and the `model_dump_json` they call is serialization.",
    "BentoML's own middlewares (request metrics, OpenTelemetry tracing, access log, timeout) "
    "are one row, except the prometheus_client calls they make: the metrics rows split "
    "prometheus_client time by its caller.",
    "The event-loop row is time in uvloop's C loop with no Python frame above it (polling, "
    "reading sockets, stepping tasks); with Python frames only, the bytes uvicorn writes are "
    "in the HTTP row and the reads uvloop does are here. Native frames move the kernel's side "
    "of socket reads (libc `read` under uvloop) from this row to the HTTP row.",
    "Garbage collection is invisible in Python frames (its time lands in whatever allocated), "
    "except the full collections the service runs itself when quiet (utils/serving/collector.py)"
    ": its whole share needs native frames; the service's GC-pause timer gives its wall time.",
    '"other" is mostly samples whose stack py-spy read while it changed (`--nonblocking` '
    "does not pause the worker): no frame at all, or innermost frames cut from their callers; "
    "their stage cannot be told.",
    "`cache_enabled: false` in every body: the cache key is never computed (the row is the "
    "bypass bookkeeping, if anything).",
    "Native frames need py-spy's blocking mode: every sample stops the worker while its stack "
    "is unwound, which lowers throughput and changes batching (see the cost table); its "
    "column is a cross-check of shares, not a measurement of the unperturbed server. Samples "
    "whose innermost native frames wait (the GIL, a condition variable, epoll) are left out.",
]


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: install it (Debian: apt-get install wrk)")
    py_spy_binary()
    work = Path(tempfile.mkdtemp(prefix="rfloc-path-"))
    home = work / "bentoml"
    model_dir = import_model_into(home, args.tracking_uri)
    spec = model_spec(model_dir)
    texts = [encode_capture(c) for c in generate_scenes(args.captures, seed=4242, spec=spec).iq]
    bodies = []
    for i, text in enumerate(texts):
        path = work / f"body-{i}.json"
        path.write_text(json.dumps({"iq_b64": text, "cache_enabled": False}))
        bodies.append(path)
    load_average = os.getloadavg()[0]  # before this run's own work: what else ran
    layers = asgi_layer_files()
    classifier = Classifier(layers)
    model = f"{model_dir.parent.name}:{model_dir.name}"
    print(f"model {model}; levels {args.levels}; work in {work}", flush=True)

    port = free_port()
    env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    log = work / "serve.log"
    windows: list[dict[str, Any]] = []
    with bentoml_serve("service:Localization", port, env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/predict"
        workers = worker_processes(proc.pid)
        if len(workers) != WORKERS:
            raise SystemExit(f"expected {WORKERS} workers, found {len(workers)}")
        wrk(url, bodies, 8, args.warmup_seconds, 2, 30)  # warm-up
        for level in args.levels:
            for profile in ("none", "python", "native"):
                if profile == "native" and level not in args.native_levels:
                    continue
                rate = args.native_rate if profile == "native" else args.rate
                row = window(
                    url,
                    base,
                    bodies,
                    level,
                    args.seconds,
                    workers,
                    proc.pid,
                    None if profile == "none" else profile,
                    rate,
                    work,
                    classifier,
                )
                print(
                    f"  c={level:<3} {row['profile']:<7} {row['rps']:>7} req/s  p50 "
                    f"{row['p50_ms']:>7} ms  p99 {row['p99_ms']:>7} ms  cpu "
                    f"{row['cpu_ms_per_request']} ms/req  non-2xx {row['non_2xx']}  "
                    f"errors {row['errors']}",
                    flush=True,
                )
                windows.append(row)
        batching = batching_choice(log)
    print("in-process timers", flush=True)
    timers = compute_timers(model_dir, texts, args.repeats)
    result = {
        "meta": run_meta(
            label=args.label or "demo",
            model=model,
            workers=WORKERS,
            levels=args.levels,
            seconds=args.seconds,
            warmup_seconds=args.warmup_seconds,
            rate_hz=args.rate,
            native_rate_hz=args.native_rate,
            native_levels=args.native_levels,
            captures=len(texts),
            shape=f"{spec.n_channels} receivers x {spec.samples_per_capture} samples",
            body_kb=round(bodies[0].stat().st_size / 1000),
            py_spy=subprocess.run(
                [py_spy_binary(), "--version"], capture_output=True, text=True
            ).stdout.strip(),
            batching=batching,
            load_generator="wrk, 2 threads (1 at c=1), same machine",
            load_average_at_start=round(load_average, 2),
        ),
        "stage_order": stage_order(layers),
        "stage_groups": stage_groups(layers),
        "asgi_layers": [name for _, name in layers],
        "windows": windows,
        "timers": timers,
        "notes": NOTES,
    }
    name = f"path-{args.label}" if args.label else "path"
    write_results(args.out, name, result, markdown(result))
    if args.keep:
        print(f"py-spy's raw files and the server log kept in {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="seconds per window")
    parser.add_argument("--warmup-seconds", type=int, default=5)
    parser.add_argument("--levels", default="1,32", help="concurrency levels, comma list")
    parser.add_argument(
        "--native-levels", default="1,32", help="levels that get a native-frames window too"
    )
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples/s, non-blocking")
    parser.add_argument(
        "--native-rate", type=int, default=50, help="py-spy samples/s with --native (blocking)"
    )
    parser.add_argument("--captures", type=int, default=8, help="distinct bodies, in turn")
    parser.add_argument("--repeats", type=int, default=200, help="in-process timer repeats")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--label", default="", help="a benchmark model's name (big_model.py)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep py-spy's raw files")
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",") if x]
    args.native_levels = [int(x) for x in args.native_levels.split(",") if x]
    args.tracking_uri = args.tracking_uri or get_settings().mlflow_tracking_uri
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
