"""Start and stop real `bentoml serve` processes for the tests."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from utils.config import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return int(self.process.returncode)


def run_import_model(
    bentoml_home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python import_model.py <args>` into `bentoml_home`, as a user runs it (`env` added)."""
    return subprocess.run(
        [sys.executable, "import_model.py", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "BENTOML_HOME": str(bentoml_home),
            "BENTOML_DO_NOT_TRACK": "1",
            **(env or {}),
        },
    )


# Real imports into fresh homes, by what they depended on: (snapshot of the home, tag).
_IMPORTS: dict[str, tuple[Path, str]] = {}


def _import_inputs(registry_dir: Path) -> str | None:
    """A digest of everything an import from this embedded registry reads: the SQLite database
    by content, every other file of the registry by name, size and mtime, and the settings in
    the environment. None without a database (nothing to reuse)."""
    from utils.config import Settings

    database = registry_dir / "mlflow.db"
    if not database.is_file():
        return None
    digest = hashlib.sha256(str(registry_dir.resolve()).encode())
    digest.update(database.read_bytes())
    for path in sorted(registry_dir.rglob("*")):
        if path.is_file() and path != database:
            stat = path.stat()
            digest.update(
                f"{path.relative_to(registry_dir)}|{stat.st_size}|{stat.st_mtime_ns}".encode()
            )
    names = {name.upper() for name in Settings.model_fields}
    env = sorted(
        (key, value)
        for key, value in os.environ.items()
        if key.upper() in names or key.upper().startswith(("MLFLOW_", "BENTOML_"))
    )
    digest.update(repr(env).encode())
    return digest.hexdigest()


def import_demo_model(bentoml_home: Path, registry_dir: Path) -> str:
    """Run import_model.py against an embedded registry; returns the BentoML tag.

    Into a fresh (missing or empty) home, a registry already imported from, unchanged since
    and under the same settings, gets a copy of that real run's home instead of the same
    import again: the same files and tag (import_model.py itself is tested, run by run, in
    tests/integration/test_import_model.py)."""
    fresh = not bentoml_home.exists() or not any(bentoml_home.iterdir())
    inputs = _import_inputs(registry_dir) if fresh else None
    if inputs is not None and inputs in _IMPORTS:
        snapshot, tag = _IMPORTS[inputs]
        shutil.copytree(snapshot, bentoml_home, dirs_exist_ok=True)
        return tag
    done = run_import_model(bentoml_home, env={"LOCAL_REGISTRY_DIR": str(registry_dir)})
    assert done.returncode == 0, done.stderr
    tag = done.stdout.strip().splitlines()[-1]
    if inputs is not None and _import_inputs(registry_dir) == inputs:
        snapshot = Path(tempfile.mkdtemp(prefix="demo-import-")) / "home"
        atexit.register(shutil.rmtree, snapshot.parent, True)
        shutil.copytree(bentoml_home, snapshot)
        _IMPORTS[inputs] = (snapshot, tag)
    return tag


def start_server(
    bentoml_home: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    target: str = "service:Localization",
    cwd: Path = PROJECT_ROOT,
    python: str = sys.executable,
    ready_timeout: float = 180.0,
) -> Server:
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [python, "-m", "bentoml", "serve", target, "--port", str(port), "--host", "127.0.0.1"],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={
            **os.environ,
            "BENTOML_HOME": str(bentoml_home),
            "BENTOML_DO_NOT_TRACK": "1",
            **(env or {}),
        },
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"bentoml serve not ready in {ready_timeout} s:\n{server.log()}")
