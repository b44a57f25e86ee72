"""Longer schemathesis run against a fresh `bentoml serve` of the newest import.

    python -m benchmarks.fuzz [--max-examples 500]   (or: make fuzz)

Same checks as the test suite's bounded run (no 5xx, responses conforming to /docs.json),
many more generated cases, random rather than deterministic generation.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.compare import bentoml_serve, free_port, import_model_into
from utils.config import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=500)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rfloc-fuzz-"))
    home = work / "bentoml"
    import_model_into(home, get_settings().mlflow_tracking_uri)
    port = free_port()
    env = {"BENTOML_HOME": str(home), "SERVICE_WORKERS": "1", "BENTOML_DO_NOT_TRACK": "True"}
    with bentoml_serve(
        "service:Localization",
        port,
        env,
        work / "serve.log",
    ):
        st_bin = str(Path(sys.executable).with_name("st"))
        return subprocess.run(
            [
                st_bin,
                "run",
                f"http://127.0.0.1:{port}/docs.json",
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--max-examples",
                str(args.max_examples),
                "--request-timeout",
                "60",
            ],
            env={**os.environ},
            check=False,
        ).returncode


if __name__ == "__main__":
    raise SystemExit(main())
