"""Run a benchmark script as `make benchmark` does: a subprocess, never an import."""

from __future__ import annotations

import subprocess
import sys

from utils.config import PROJECT_ROOT


def run_script(module: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`python -m <module> <args>` from the project root; its exit code is the caller's to
    check (the output is attached for the assertion message)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
