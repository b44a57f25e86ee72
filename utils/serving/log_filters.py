"""Keep client mistakes out of the error log.

BentoML logs every rejected request body (a pydantic validation error, a 4xx BentoML error) at
ERROR level with a full traceback: under a stream of bad input that floods the log and buries
real faults. This filter turns those records into one INFO line naming the request and the
problem; server-side exceptions keep their ERROR level and traceback.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


def _client_error(exc: BaseException | None) -> bool:
    if isinstance(exc, ValidationError):
        return True
    code = getattr(exc, "error_code", None)
    value = getattr(code, "value", code)
    return isinstance(value, int) and 400 <= value < 500


class ClientErrorsWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and _client_error(exc):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            record.msg = f"{record.getMessage()}: rejected input ({first})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install() -> None:
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorsWithoutTraceback) for f in logger.filters):
        logger.addFilter(ClientErrorsWithoutTraceback())
