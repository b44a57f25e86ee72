"""Model updates without downtime, through the real path (README, "Model updates").

One `bentoml serve` with two workers, the store watch on and an ADMIN_TOKEN, under 16
concurrent clients the whole time: a second genuinely trained version (the demo bootstrap's
`--force`) is imported and taken up by the watch, rolled back by tag, served again in one step by
`import_model.py --reload-url`, and, once its stored bytes are changed, refused while the old
one keeps serving. Then the token cases. Every request must succeed and carry one of the two
versions; a request sent after a step finished must carry that step's version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.scripts import run_script
from tests.support.serving import Server, run_import_model, start_server
from utils.api.decoding import encode_capture
from utils.config import PROJECT_ROOT
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

TOKEN = "reload-test-token-0123456789"
CLIENTS = 16


@pytest.fixture(scope="module")
def second_version(demo_registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's registry with a second trained version in Production (the
    session's registry stays as other tests expect it)."""
    settings, _ = demo_registry
    registry = tmp_path_factory.mktemp("registry-two") / "registry"
    shutil.copytree(settings.local_registry_dir, registry)
    run_script(
        "demo.bootstrap",
        "--force",
        "--scenes",
        "4000",
        "--seed",
        "7",
        env={"LOCAL_REGISTRY_DIR": str(registry)},
    )
    return registry


def import_model(home: Path, registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"LOCAL_REGISTRY_DIR": str(registry), "ADMIN_TOKEN": TOKEN}
    return run_import_model(home, *args, env=env)


@pytest.fixture(scope="module")
def server(home: Path, second_version: Path) -> Iterator[Server]:
    srv = start_server(
        home,
        home / "reload.log",
        env={"SERVICE_WORKERS": "2", "ADMIN_TOKEN": TOKEN, "MODEL_WATCH_SECONDS": "0.5"},
    )
    yield srv
    srv.stop()


@dataclass
class Load:
    """16 clients posting /predict until stopped: (sent at, status, model_version or body)."""

    url: str
    bodies: list[dict[str, object]]
    results: list[tuple[float, int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, k: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = k
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(f"{self.url}/predict", json=self.bodies[i % len(self.bodies)])
                    what = r.json().get("model_version") if r.status_code == 200 else r.text
                    self.results.append((sent, r.status_code, str(what)[:300]))
                except httpx.HTTPError as exc:
                    self.results.append((sent, 0, repr(exc)))
                i += CLIENTS

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._client, args=(k,)) for k in range(CLIENTS)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def info(server: Server) -> dict:
    return httpx.get(f"{server.url}/model/info", timeout=30).json()


def served_everywhere(server: Server, tag: str, timeout: float = 30.0) -> float:
    """Wait until every worker reports `tag`; the time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = info(server)
        if answer["workers_agree"] and {w["bento_model_tag"] for w in answer["workers"]} == {tag}:
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"workers did not converge on {tag}: {info(server)['workers']}")


def reload(server: Server, body: dict[str, object], token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.url}/model/reload", json=body, headers=headers, timeout=120)


def reloads_metric(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^rfloc_model_reloads_total\{result="(\w+)"\} (\S+)$', text, re.M)
    }


def test_reload_watch_rollback_and_refusal_under_load(
    server: Server, home: Path, second_version: Path, spec: FeatureSpec, report: list[str]
) -> None:
    first_tag = info(server)["bento_model_tag"]
    served_everywhere(server, first_tag)  # /readyz answers once one worker is ready
    start = info(server)
    first_version = start["model_version"]
    assert start["workers_agree"] and len(start["workers"]) == 2
    scenes = generate_scenes(24, seed=5, spec=spec)
    bodies: list[dict[str, object]] = [
        {"iq_b64": encode_capture(iq), "cache_enabled": i % 2 == 0}
        for i, iq in enumerate(scenes.iq)
    ]
    steps: list[tuple[float, float, str]] = []  # (began, finished, version expected after)

    with Load(server.url, bodies) as load:
        time.sleep(1.0)

        # 1. a new import is taken up by the store watch, on every worker
        began = time.monotonic()
        done = import_model(home, second_version)
        assert done.returncode == 0, done.stderr
        second_tag = done.stdout.strip().splitlines()[-1]
        assert second_tag != first_tag
        finished = served_everywhere(server, second_tag)
        second_version_label = info(server)["model_version"]
        assert second_version_label != first_version
        steps.append((began, finished, second_version_label))
        report.append(f"reload: store watch took up a new import in {finished - began:.1f} s")
        time.sleep(1.0)

        # 2. rollback by tag; the watch does not undo it
        began = time.monotonic()
        r = reload(server, {"tag": first_tag})
        finished = time.monotonic()
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["result"] == "reloaded" and body["workers_agree"], body
        assert body["bento_model_tag"] == first_tag and body["model_version"] == first_version
        assert body["previous_bento_model_tag"] == second_tag
        assert {w["bento_model_tag"] for w in body["workers"]} == {first_tag}
        steps.append((began, finished, first_version))
        report.append(f"reload: rollback answered, all workers on it, in {finished - began:.2f} s")
        time.sleep(2.0)  # four watch periods
        assert info(server)["bento_model_tag"] == first_tag

        # 3. one step from registry to served: import_model.py --reload-url
        began = time.monotonic()
        done = import_model(home, second_version, "--reload-url", server.url)
        finished = time.monotonic()
        assert done.returncode == 0, done.stderr
        assert "every worker serves " + second_tag in done.stderr
        steps.append((began, finished, second_version_label))
        time.sleep(1.0)

        # 4. back to the first, then the second's stored bytes change: refused, nothing moves
        began = time.monotonic()
        assert reload(server, {"tag": first_tag.split(":")[1]}).status_code == 200
        finished = time.monotonic()
        steps.append((began, finished, first_version))
        stored = home / "models" / second_tag.replace(":", "/") / "model.onnx"
        original = stored.read_bytes()
        failed_before = reloads_metric(server).get("failed", 0.0)
        try:
            stored.write_bytes(original[:-64] + bytes(64))
            r = reload(server, {})  # the newest import: the changed one
            assert r.status_code == 422, r.text
            assert r.json()["field"] == "tag" and "sha256" in r.json()["error"]
        finally:
            stored.write_bytes(original)
        assert reloads_metric(server)["failed"] == failed_before + 1
        after = info(server)
        assert after["bento_model_tag"] == first_tag and after["workers_agree"]
        time.sleep(1.0)

    results = load.results
    failed = [r for r in results if r[1] != 200]
    assert not failed, failed[:5]
    versions = {r[2] for r in results}
    assert versions == {first_version, second_version_label}, versions
    for (_, finished, expected), nxt in zip(steps, [*steps[1:], None], strict=True):
        until = nxt[0] if nxt else float("inf")
        window = [r for r in results if finished < r[0] < until]
        assert window and {r[2] for r in window} == {expected}, (expected, len(window))
    counts = reloads_metric(server)
    assert counts["success"] >= 8  # four swaps, on two workers each
    assert "refused localization_model" in server.log()
    report.append(
        f"reload: {len(results)} requests under {CLIENTS} clients across 4 model changes "
        f"and one refusal, 0 failed"
    )


def test_readme_reload_commands_run_as_printed(server: Server) -> None:
    """The curl lines of the README's "Model updates" block, against this server."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Model updates", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    commands = [c for c in block.replace("\\\n", " ").splitlines() if c.startswith("curl ")]
    assert len(commands) == 2, commands
    first_tag = info(server)["bento_model_tag"]
    answers = []
    for command in commands:
        command = command.replace("localhost:3000", server.url.removeprefix("http://"))
        command = command.replace("localization_model:<older version>", first_tag)
        done = subprocess.run(
            ["bash", "-c", command + " --silent --show-error --fail-with-body"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "ADMIN_TOKEN": TOKEN},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        answers.append(json.loads(done.stdout))
    assert answers[0]["result"] == "reloaded" and answers[0]["bento_model_tag"] != first_tag
    assert answers[1]["bento_model_tag"] == first_tag and answers[1]["workers_agree"]


def test_a_restarted_worker_comes_back_on_the_reloaded_model(
    server: Server, home: Path, report: list[str]
) -> None:
    """Rolled back away from the newest import, a worker killed with SIGKILL is respawned on
    the rolled-back model (the shared record), not on the newest import it would resolve."""
    store = home / "models" / "localization_model"
    latest = (store / "latest").read_text().strip()
    (older,) = [d.name for d in store.iterdir() if d.is_dir() and d.name != latest]
    r = reload(server, {"tag": older})
    assert r.status_code == 200 and r.json()["workers_agree"], r.text
    victim = r.json()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    began = time.monotonic()
    while time.monotonic() < began + 90:
        answer = info(server)
        pids = {w["pid"] for w in answer["workers"]}
        if victim not in pids and len(pids) == 2 and answer["workers_agree"]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no respawned worker agreed: {info(server)['workers']}")
    assert {w["bento_model_tag"] for w in answer["workers"]} == {f"localization_model:{older}"}
    report.append(
        f"reload: a killed worker came back on the rolled-back model in "
        f"{time.monotonic() - began:.1f} s"
    )
    # back to the newest import: the killed worker's file still says `older` is served (1);
    # /metrics must name only what the live workers serve
    r = reload(server, {"tag": latest})
    assert r.status_code == 200 and r.json()["workers_agree"], r.text
    assert served_models(server) == {f"localization_model:{latest}"}


def served_models(server: Server) -> set[str]:
    """The `bento_tag`s `rfloc_model_info` reports at 1 (aggregated over the workers)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        m.group(1)
        for m in re.finditer(
            r'^rfloc_model_info\{[^}]*bento_tag="([^"]+)"[^}]*\} (\S+)$', text, re.M
        )
        if float(m.group(2)) == 1.0
    }


def test_reload_refuses_without_the_token_and_changes_nothing(server: Server) -> None:
    before, counts = info(server), reloads_metric(server)
    missing = reload(server, {"tag": "nope"}, token=None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["field"] == "authorization"
    wrong = reload(server, {}, token=TOKEN[:-1] + "x")
    assert wrong.status_code == 403 and "not ADMIN_TOKEN" in wrong.json()["error"]
    basic = httpx.post(
        f"{server.url}/model/reload", json={}, headers={"Authorization": f"Basic {TOKEN}"}
    )
    assert basic.status_code == 401
    unknown = reload(server, {"tag": "localization_model:doesnotexist"})
    assert unknown.status_code == 404 and unknown.json()["field"] == "tag"
    other = reload(server, {"tag": "another_model:v1"})
    assert other.status_code == 400 and "not a version of" in other.json()["error"]
    after = info(server)
    assert after["bento_model_tag"] == before["bento_model_tag"]
    assert after["workers"] == before["workers"]
    assert reloads_metric(server).get("success") == counts.get("success")


def both_tags(server: Server, home: Path, second_version: Path) -> tuple[str, str]:
    """The module's two stored versions, oldest first (the second imported, and taken up by
    the watch, when this test runs alone)."""
    store = home / "models" / "localization_model"
    if sum(d.is_dir() for d in store.iterdir()) < 2:
        done = import_model(home, second_version)
        assert done.returncode == 0, done.stderr
        served_everywhere(server, done.stdout.strip().splitlines()[-1])
    dirs = sorted((d for d in store.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    assert len(dirs) == 2, dirs
    return f"localization_model:{dirs[0].name}", f"localization_model:{dirs[1].name}"


def at_once(barrier: threading.Barrier, server: Server, tag: str) -> httpx.Response:
    barrier.wait()
    return reload(server, {"tag": tag})


def test_concurrent_reloads_never_claim_a_tag_other_than_the_one_asked_for(
    server: Server, home: Path, second_version: Path, report: list[str]
) -> None:
    """Two reloads to different tags at once, six times: each answer is either a 200 naming
    the tag asked for, served by every worker, or a 409; the last success is what is served."""
    tags = both_tags(server, home, second_version)
    conflicts = successes = 0
    for round_ in range(6):
        asked = tags if round_ % 2 else tags[::-1]
        barrier = threading.Barrier(len(asked))
        with ThreadPoolExecutor(len(asked)) as pool:
            answers = list(pool.map(lambda t, b=barrier: at_once(b, server, t), asked))
        won: list[tuple[int, str]] = []
        for tag, r in zip(asked, answers, strict=True):
            if r.status_code == 409:
                assert r.json()["field"] == "tag", r.text
                conflicts += 1
                continue
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["bento_model_tag"] == tag, (tag, body)
            assert body["workers_agree"] and {w["bento_model_tag"] for w in body["workers"]} == {
                tag
            }, body
            won.append((body["generation"], tag))
            successes += 1
        assert won, [r.text for r in answers]
        now = info(server)
        assert now["workers_agree"] and now["bento_model_tag"] == max(won)[1], (won, now)
    report.append(
        f"reload: 6 rounds of 2 concurrent reloads to different tags: {successes} answered 200 "
        f"with the tag asked for on every worker, {conflicts} answered 409, none another tag"
    )


def store_listing(home: Path) -> list[tuple[str, int, int]]:
    """Every file and folder of the BentoML model store: (path, size, mtime_ns)."""
    models = home / "models"
    return sorted(
        (str(p.relative_to(models)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in models.rglob("*")
    )


MALFORMED_TAGS = [
    "../../etc",
    "localization_model:../x",
    "localization_model:",
    ":v1",
    "",
    "a/b",
    "localization_model:V1",
    "localization_model:v1:v2",
    "localization_model:-v1",
    "localization_model:" + "v" * 64,
    "localization model:v1",
    "localization_model:v1\x00",
]


def test_malformed_tags_are_400_naming_tag_and_touch_nothing(server: Server, home: Path) -> None:
    before, listing, counts = info(server), store_listing(home), reloads_metric(server)
    tracebacks = server.log().count("Traceback")
    for bad in MALFORMED_TAGS:
        r = reload(server, {"tag": bad})
        assert r.status_code == 400, (bad, r.status_code, r.text)
        body = r.json()
        assert body["field"] == "tag" and body["error"].startswith("tag: "), (bad, body)
        if len(bad) > 3:
            assert bad not in r.text, (bad, body)  # no input echoed back
        assert "Traceback" not in r.text
    after = info(server)
    assert after["bento_model_tag"] == before["bento_model_tag"]
    assert after["workers"] == before["workers"]
    assert store_listing(home) == listing
    assert reloads_metric(server) == counts
    assert server.log().count("Traceback") == tracebacks


def test_the_token_is_checked_before_the_body(server: Server) -> None:
    """401 without (or with a malformed) Authorization, 403 with a wrong token, whatever the
    body: a wrong type, an unknown key, malformed JSON, a malformed tag, or a body over the
    route's 64 KiB; the token is checked before a byte of it is read."""
    bodies: list[bytes] = [
        b'{"tag": 5}',
        b'{"x": 1}',
        b'{"tag": ',
        b'{"tag": "../../etc"}',
        b'{"tag": "' + b"v" * 70_000 + b'"}',
    ]
    for body in bodies:
        for headers, status in (
            ({}, 401),
            ({"Authorization": f"Basic {TOKEN}"}, 401),
            ({"Authorization": f"Bearer {TOKEN[:-1]}x"}, 403),
        ):
            r = httpx.post(
                f"{server.url}/model/reload",
                content=body,
                headers={"Content-Type": "application/json", **headers},
                timeout=30,
            )
            assert r.status_code == status, (body[:20], headers, r.text)
            assert r.json()["field"] == "authorization", r.text
            assert (r.headers.get("www-authenticate") == "Bearer") == (status == 401)
    # with the token, the same bodies reach validation
    r = httpx.post(
        f"{server.url}/model/reload",
        content=bodies[0],
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["field"] == "tag", r.text


class OtherTagService(ThreadingHTTPServer):
    """A stand-in for a service that answers a reload with `status` and `answer`: what a
    service overtaken by another reload, or one serving another model, says."""

    def __init__(self, status: int, answer: dict[str, object]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("content-length", 0))
                outer.asked.append(json.loads(self.rfile.read(length) or b"{}"))
                payload = json.dumps(outer.answer).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: object) -> None:
                pass

        self.status, self.answer, self.asked = status, answer, []
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_import_model_fails_when_the_service_serves_another_tag(
    server: Server, home: Path, demo_registry
) -> None:
    """`import_model.py --reload-url` succeeds only when every worker serves the tag it
    imported: a 200 naming another tag (workers agreeing on it) or a 409 is exit 8."""
    settings, _ = demo_registry
    answer = info(server)
    imported = import_model(home, settings.local_registry_dir)
    assert imported.returncode == 0, imported.stderr
    tag = imported.stdout.strip().splitlines()[-1]
    other = "localization_model:aaaaaaaaaaaaaaaa"
    workers = [{**w, "bento_model_tag": other} for w in answer["workers"]]
    cases = [
        (
            200,
            {
                "result": "unchanged",
                "bento_model_tag": other,
                "model_version": "9+other",
                "previous_bento_model_tag": other,
                "previous_model_version": "9+other",
                "generation": 3,
                "workers": workers,
                "workers_agree": True,
            },
            f"serves {other}, not {tag}",
        ),
        (
            409,
            {"error": "tag: overtaken", "field": "tag", "detail": []},
            "409",
        ),
    ]
    for status, body, expected in cases:
        fake = OtherTagService(status, body)
        try:
            done = import_model(home, settings.local_registry_dir, "--reload-url", fake.url)
        finally:
            fake.shutdown()
            fake.server_close()
        assert fake.asked == [{"tag": tag}]
        assert done.returncode == 8, (done.returncode, done.stderr)
        assert expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_reload_benchmark_runs_and_writes_its_results(home: Path, tmp_path: Path) -> None:
    """`python -m benchmarks.reload`, briefly, on this module's two imports."""
    run_script(
        "benchmarks.reload",
        *("--rounds", "1", "--seconds", "3", "--interval", "0.5", "--workers", "2"),
        *("--out", str(tmp_path)),
        env={"BENTOML_HOME": str(home)},
    )
    result = json.loads((tmp_path / "reload.json").read_text())
    summary = result["summary"]
    assert summary["steady"]["failed"] == 0 and summary["reloading"]["failed"] == 0
    assert summary["reloads"] >= 2 and summary["reloads_ok"] == summary["reloads"]
    assert summary["reloads_agreed"] == summary["reloads"]
    assert "| reloading |" in (tmp_path / "reload.md").read_text()
