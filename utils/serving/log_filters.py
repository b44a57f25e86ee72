"""Keep client mistakes out of the error log, and client bytes from forging log lines.

BentoML logs every rejected request body (a pydantic validation error, a 4xx BentoML error) at
ERROR level with a full traceback: under a stream of bad input that floods the log and buries
real faults. `ClientErrorsWithoutTraceback` turns those records into one INFO line naming the
request and the problem; server-side exceptions keep their ERROR level and traceback. A client
that went away mid-body makes BentoML log a `ClientDisconnect` traceback too (also after a 413
or 408 cut the body short): that record is dropped, because `utils/asgi/client_gone.py` logs the
one INFO line a departed client is worth.

`EscapeControls` makes every log line one line: the path BentoML's access log writes is
percent-decoded (`/predict%0A...` arrives as a real line feed) and headers and request fields
reach messages too, so CR, LF, ESC and every other C0/C1 control character (plus the Unicode
line separators and bidirectional overrides) in a record's message are written as escapes
(`\\n`, `\\r`, `\\x1b`, `\\u2028`): a client cannot forge a log line or colour a terminal.
Tracebacks stay multi-line, with their other control characters escaped. A message meant to
span lines (the start announcement) says so with `extra=MULTILINE`; only its line feeds stay.
"""

from __future__ import annotations

import logging
import re
import traceback

from pydantic import ValidationError

BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"
#: Loggers whose records carry request data: BentoML's access log and HTTP app, uvicorn's,
#: and the service's own (records of other loggers pass the handlers' filter instead).
ESCAPED_LOGGERS = (
    "bentoml.access",
    BENTOML_HTTP_LOGGER,
    "bentoml.service.localization",
    "bentoml",
    "uvicorn.error",
    "uvicorn.access",
)
#: `log.info(text, extra=MULTILINE)`: this message's line feeds are layout, not data.
MULTILINE = {"rfloc_multiline": True}

# C0, DEL and C1; the Unicode line and paragraph separators; bidirectional embeddings,
# overrides and isolates (they reorder what a terminal shows)
_OTHERS = r"\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(rf"[\x00-\x1f{_OTHERS}]")
_CONTROL_BUT_LF = re.compile(rf"[\x00-\x09\x0b-\x1f{_OTHERS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """`text` with control characters as visible escapes; nothing else changes, and escaping
    twice gives the same text (an escape contains no control character)."""
    pattern = _CONTROL_BUT_LF if keep_newlines else _CONTROL
    return pattern.sub(_escape_one, text) if pattern.search(text) else text


class EscapeControls(logging.Filter):
    """Rewrites a record's message (format and arguments, merged) with its control characters
    escaped; the traceback, if any, keeps its line feeds only."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: logging reports it as usual
            return True
        multiline = bool(getattr(record, "rfloc_multiline", False))
        record.msg, record.args = escape_controls(message, keep_newlines=multiline), ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = escape_controls(text, keep_newlines=True)
        elif record.exc_text:
            record.exc_text = escape_controls(record.exc_text, keep_newlines=True)
        if record.stack_info:
            record.stack_info = escape_controls(record.stack_info, keep_newlines=True)
        return True


def _client_error(exc: BaseException | None) -> bool:
    if isinstance(exc, ValidationError):
        return True
    code = getattr(exc, "error_code", None)
    value = getattr(code, "value", code)
    return isinstance(value, int) and 400 <= value < 500


def _client_gone(exc: BaseException | None) -> bool:
    """Starlette's `ClientDisconnect`: the body stopped because the client left, or because a
    413/408 already answered and cut it short. Matched by name: no Starlette import here."""
    return exc is not None and type(exc).__name__ == "ClientDisconnect"


class ClientErrorsWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and _client_gone(exc):
            return False  # logged once, at INFO, by the ClientGone middleware
        if record.levelno >= logging.ERROR and _client_error(exc):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            record.msg = f"{record.getMessage()}: rejected input ({first})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _add_once(target: logging.Logger | logging.Handler, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in target.filters):
        target.addFilter(kind())


def install() -> None:
    """In each worker, after BentoML configured its logging (before the service is loaded)."""
    _add_once(logging.getLogger(BENTOML_HTTP_LOGGER), ClientErrorsWithoutTraceback)
    for name in ESCAPED_LOGGERS:  # after the filter above: it rewrites the message first
        _add_once(logging.getLogger(name), EscapeControls)
    # every record a configured handler writes, whichever logger it came from
    for logger in (logging.getLogger(), logging.getLogger("bentoml")):
        for handler in logger.handlers:
            _add_once(handler, EscapeControls)
