"""The start message: the address comes from the socket really bound, URLs open as printed."""

from __future__ import annotations

import socket
import subprocess
import sys

from utils.config import PROJECT_ROOT
from utils.serving.announce import base_url, listening_address, start_message


def test_the_listening_socket_is_found() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert listening_address() == s.getsockname()


def test_nothing_listening_reads_none() -> None:
    # a process of its own: this one may hold other tests' listening sockets
    code = "from utils.serving.announce import listening_address; print(listening_address())"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.stdout.strip() == "None", done.stderr


def test_wildcards_open_as_localhost_and_ipv6_is_bracketed() -> None:
    assert base_url("0.0.0.0", 3000) == "http://localhost:3000"
    assert base_url("::", 3000) == "http://localhost:3000"
    assert base_url("::1", 3000) == "http://[::1]:3000"
    assert base_url("10.1.2.3", 8080) == "http://10.1.2.3:8080"


def test_the_prediction_example_needs_the_project_script() -> None:
    inside = start_message("http://localhost:3000", "m:1", "/opt/py/bin/python")
    container = start_message("http://localhost:3000", "m:1", None)
    assert "/opt/py/bin/python -m scripts.sample_request | curl" in inside
    assert "scripts.sample_request" not in container
    assert "curl -s http://localhost:3000/ellipse" in container
