"""Run a benchmark script as `make benchmark` does: a subprocess, never an import."""

from __future__ import annotations

import os
import subprocess
import sys

from utils.config import PROJECT_ROOT


def run_script(
    module: str, *args: str, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> <args>` from the project root (`env` added to the environment);
    fails the test, with the script's output, unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"{module} exited {done.returncode}:\n" + (
        done.stdout[-2000:] + done.stderr[-2000:]
    )
    return done
