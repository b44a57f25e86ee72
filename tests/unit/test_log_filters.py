"""Log hygiene (utils/serving/log_filters.py): every line one line, client departures quiet.

Real `logging` loggers and handlers writing to a buffer, formatted as BentoML's server log is.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from utils.serving.log_filters import (
    MULTILINE,
    ClientErrorsWithoutTraceback,
    EscapeControls,
    escape_controls,
    install,
)

# BentoML's server log format (bentoml._internal.log.TRACED_LOG_FORMAT, without its fields)
FORMAT = "%(asctime)s [%(levelname)s] %(message)s"
DATE = "%Y-%m-%dT%H:%M:%S%z"
FORGED = "/predict\n2026-11-26T19:20:00+0000 [ERROR] FAKE\x1b[31m red \r\x00"


@pytest.fixture()
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own with EscapeControls, writing to a buffer in BentoML's format."""
    logger = logging.getLogger("test.log_filters")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter(FORMAT, DATE))
    logger.addHandler(handler)
    logger.addFilter(EscapeControls())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)
    logger.filters.clear()


def test_every_c0_c1_and_del_character_is_escaped_and_nothing_else() -> None:
    controls = [*map(chr, range(0x20)), chr(0x7F), *map(chr, range(0x80, 0xA0))]
    for char in controls:
        escaped = escape_controls(f"a{char}b")
        assert escaped != f"a{char}b" and escaped.startswith("a\\") and escaped.endswith("b")
        assert all(ord(c) >= 0x20 for c in escaped), repr(escaped)
    assert escape_controls("\n\r\t\x1b\x00\x85") == "\\n\\r\\t\\x1b\\x00\\x85"
    # Unicode line separators and bidirectional overrides reorder or split what is shown
    assert escape_controls("a\u2028b\u202ec\u2066") == "a\\u2028b\\u202ec\\u2066"
    plain = "GET /predict?x=1 — Torino °C 中文 [ERROR] \\n already"
    assert escape_controls(plain) is plain  # printable text, non-ASCII included, untouched


def test_escaping_is_idempotent_and_can_keep_line_feeds() -> None:
    once = escape_controls(FORGED)
    assert escape_controls(once) == once
    kept = escape_controls(FORGED, keep_newlines=True)
    assert kept.count("\n") == 1 and "\\x1b" in kept and "\\r" in kept and "\\x00" in kept


def test_a_forged_access_line_is_written_as_one_escaped_line(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = logged
    # BentoML's access log call: the path is an argument, percent-decoded
    logger.info("%s (%s) (%s) %.3fms", "127.0.0.1:5000", f"path={FORGED}", "status=404", 0.4)
    out = buffer.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n")
    assert "\x1b" not in out and "\r" not in out and "\x00" not in out
    assert "path=/predict\\n2026-11-26T19:20:00+0000 [ERROR] FAKE\\x1b[31m red \\r\\x00)" in out


def test_a_message_built_before_logging_is_escaped_too(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = logged
    logger.warning(f"rejected {FORGED}")  # noqa: G004 - what careless code does
    assert buffer.getvalue().count("\n") == 1


def test_a_multiline_message_keeps_its_line_feeds_only(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = logged
    logger.info("%s", "ready\n  map  http://x/map/\x1b[0m", extra=MULTILINE)
    assert buffer.getvalue().splitlines()[1:] == ["  map  http://x/map/\\x1b[0m"]


def test_a_traceback_stays_multiline_with_its_other_controls_escaped(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = logged
    try:
        raise ValueError("bad \x1b[31mred\r")
    except ValueError:
        logger.exception("failed on %s", "/x\ny")
    out = buffer.getvalue()
    assert "failed on /x\\ny\nTraceback (most recent call last):\n" in out
    assert "ValueError: bad \\x1b[31mred\\r" in out
    assert "\x1b" not in out and "\r" not in out


def test_client_disconnect_tracebacks_are_dropped_and_client_errors_shortened() -> None:
    filt = ClientErrorsWithoutTraceback()

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException as raised:  # noqa: BLE001
            info = (type(raised), raised, raised.__traceback__)
        return logging.LogRecord(
            "bentoml._internal.server.http_app",
            logging.ERROR,
            __file__,
            1,
            "Exception on %s [%s]",
            ("/predict", "POST"),
            info,
        )

    assert filt.filter(record(ClientDisconnect())) is False

    class Model(BaseModel):
        x: int

    try:
        Model(x="no")  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001
        invalid = record(exc)
    assert filt.filter(invalid) is True
    assert invalid.levelname == "INFO" and invalid.exc_info is None
    assert invalid.getMessage().startswith("Exception on /predict [POST]: rejected input (")
    fault = record(RuntimeError("server bug"))
    assert filt.filter(fault) is True
    assert fault.levelname == "ERROR" and fault.exc_info is not None  # a fault stays one
    quiet = record(ClientDisconnect())
    quiet.levelno = logging.INFO
    assert filt.filter(quiet) is True  # only the framework's ERROR report is dropped


def test_install_adds_each_filter_once_to_loggers_and_configured_handlers() -> None:
    handler = logging.StreamHandler(io.StringIO())
    bentoml_logger = logging.getLogger("bentoml")
    bentoml_logger.addHandler(handler)
    try:
        install()
        install()
        access = logging.getLogger("bentoml.access")
        http = logging.getLogger("bentoml._internal.server.http_app")
        assert [type(f) for f in access.filters].count(EscapeControls) == 1
        assert [type(f) for f in handler.filters] == [EscapeControls]
        kinds = [type(f) for f in http.filters]
        assert kinds.count(ClientErrorsWithoutTraceback) == 1 and kinds.count(EscapeControls) == 1
        # the record is shortened first, then escaped
        assert kinds.index(ClientErrorsWithoutTraceback) < kinds.index(EscapeControls)
    finally:
        bentoml_logger.removeHandler(handler)
