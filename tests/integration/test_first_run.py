"""A first run that talks: bars on a terminal, plain log lines elsewhere.

The demo bootstrap and `import_model.py` run as users run them, once under a pseudo-terminal
(what a person at `make serve` sees) and once with pipes (what CI, a container or a log file
gets); small scenes keep the training short.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mlflow_server import mlflow_server
from utils.config import PROJECT_ROOT

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SCENES = "600"


def _in_terminal(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300
) -> tuple[int, str]:
    """Run `args` with stdin/stdout/stderr on a pseudo-terminal; (exit code, what it drew)."""
    main, child = pty.openpty()
    # a window of a real size: a fresh pseudo-terminal is 0 x 0, and bars drawn to fit it vanish
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdin=child, stdout=child, stderr=child, close_fds=True
    )
    os.close(child)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    return proc.wait(timeout=30), out.decode(errors="replace")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    return {
        **env,
        "TERM": "xterm-256color",
        "COLUMNS": "120",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "1",
        "PYTHONPATH": str(PROJECT_ROOT),  # run from a scratch folder, never the checkout
        **extra,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """A small demo model trained on a terminal into a real `mlflow server` (whose artifacts
    travel over HTTP, as a remote registry's do): (work folder, tracking URI, what it drew)."""
    tmp = tmp_path_factory.mktemp("first-run")
    with mlflow_server(tmp) as uri:
        args = [sys.executable, "-m", "demo.bootstrap", "--tracking-uri", uri, "--scenes", SCENES]
        code, drawn = _in_terminal(args, tmp, _env(tmp))
        assert code == 0, drawn[-3000:]
        yield tmp, uri, drawn


def test_training_draws_bars_on_a_terminal(trained: tuple[Path, str, str]) -> None:
    drawn = trained[2]
    assert ANSI.search(drawn), "no terminal drawing at all"
    text = ANSI.sub("", drawn)
    # a bar that counted the scenes, then each step by name
    assert f"{SCENES}/{SCENES}" in text, text[-3000:]
    for step in (
        "synthetic scenes -> features",
        "fitting the position MLP",
        "fitting the uncertainty head",
        "evaluating on the held-out scenes",
    ):
        assert step in text, step


def test_training_logs_plain_lines_without_a_terminal(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "demo.bootstrap", "--tracking-uri", uri, "--scenes", SCENES],
        cwd=tmp_path,  # MLflow puts a SQLite registry's artifacts under ./mlruns
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not ANSI.search(done.stderr + done.stdout), "control sequences in a log"
    lines = [line for line in done.stderr.splitlines() if "demo.progress" in line]
    assert len(lines) == 4, done.stderr[-3000:]
    assert re.search(rf"synthetic scenes -> features \({SCENES} of {SCENES}\): [\d.]+ s", lines[0])


def test_import_shows_download_progress_on_a_terminal(trained: tuple[Path, str, str]) -> None:
    tmp, uri, _ = trained
    args = [sys.executable, str(PROJECT_ROOT / "import_model.py"), "--tracking-uri", uri]
    code, drawn = _in_terminal(args, tmp, _env(tmp))
    assert code == 0, drawn[-3000:]
    assert "Downloading artifacts" in drawn, drawn[-3000:]
