"""A redis-server of a test's own, which the test may stall (SIGSTOP) or kill."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.support.serving import free_port


class PrivateRedis:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def require_redis_server() -> None:
    """Fail (never skip silently: CI has the binary) without `redis-server`, unless
    RFLOC_ALLOW_SKIP_REDIS=1 says to skip knowingly."""
    if shutil.which("redis-server") is None:
        if os.environ.get("RFLOC_ALLOW_SKIP_REDIS") == "1":
            pytest.skip("no redis-server binary (RFLOC_ALLOW_SKIP_REDIS=1)")
        pytest.fail(
            "this test starts, stalls and kills a private redis-server: install it (Debian: "
            "redis-server) or set RFLOC_ALLOW_SKIP_REDIS=1 to skip it knowingly"
        )


@contextmanager
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    """A started private redis-server on a free port, killed afterwards."""
    require_redis_server()
    server = PrivateRedis(free_port(), workdir)
    server.start()
    try:
        yield server
    finally:
        server.kill()
