"""The HTTP/1.1 connection itself, bounded: header size and count, a header deadline, a
connection cap per worker, and the server's own refusals in the one error shape.

Everything else in this package sees a request once its headers are complete; before that
the server (uvicorn with httptools) is alone with the connection, and it bounded nothing:
a 64 MB header was read whole and answered 200 (32 of them took each worker to 1.1 GB:
httptools buffers a header value, and uvicorn the URL, until it ends), a connection that sent
nothing or one byte was held for ever (uvicorn's keep-alive timer is cancelled by any byte
and never armed on a fresh connection), 10 000 such connections held 5 000 files per
worker, and a malformed request got uvicorn's plain-text `Invalid HTTP request received.`,
logged twice without the client's address. BentoML builds uvicorn's `Config` itself and
passes no protocol options, so `install()` points uvicorn's `http="auto"` (and
`"httptools"`) at `BoundedHttpToolsProtocol`, which adds, per connection:

- `MAX_HEADER_BYTES`: the request line and headers are fed to the parser in slices that never
  take them past the limit; one byte more is answered 431 and the connection closed, so the
  parser never holds more than the limit;
- `MAX_HEADERS`: header fields per request; one more is 431;
- `HEADER_TIMEOUT_S`: from the connection's opening, and from the first byte of each later
  request on it, to the end of the headers; then 408 (if any byte of a request came) or a
  plain close (an idle connection), whichever applies. The body has its own deadline
  (`BODY_TIMEOUT_S`, `body_deadline.py`);
- `MAX_CONNECTIONS_PER_WORKER`: a connection opened beyond it is answered 503 +
  `Retry-After` once its headers are in, and closed: an overload answer, not an accept loop
  that stops when the worker runs out of files. Beyond twice the cap a new connection is
  closed at once, unanswered: the worker's open files stay bounded in a flood;
- a malformed request (the HTTP parser's error) is answered 400 in the one error shape with
  the parser's reason, never the input, and logged once at WARNING with the client address.
  A request the service was already reading when its body turned out malformed (a bad chunk)
  is marked (`PROTOCOL_ERROR` in its scope) so `client_gone.py` records the 400 the client got
  in the access log and request metrics, not a 499.

Each refusal is counted in `rfloc_connections_closed_total{reason}`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn import config as uvicorn_config

try:  # pinned in requirements/serve.txt; absent only where a benchmark blocks it on purpose
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # uvicorn falls back to h11 (benchmarks/http_stack.py's baseline)
    httptools = None
    HttpToolsProtocol = object  # type: ignore[assignment,misc]

from utils.api.errors import encode_error, error_payload
from utils.serving import metrics

if TYPE_CHECKING:
    from utils.config import Settings

log = logging.getLogger("bentoml.service.localization")

#: scope key of a request's `ProtocolError`: set by the protocol when the request's own bytes
#: turn out malformed after the service began reading it (read by `client_gone.py`)
PROTOCOL_ERROR = "rfloc.protocol_error"
#: the `reason` label values of `rfloc_connections_closed_total`
REASONS = metrics.CONNECTION_CLOSE_REASONS  # each on /metrics at 0 from the start (initialise)
_REASON_CHARS = re.compile(r"[^A-Za-z0-9 ',._-]")


@dataclass(frozen=True)
class Limits:
    """Per-connection bounds; 0 turns `max_connections` off."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            max_connections=settings.max_connections_per_worker,
        )


class ProtocolError:
    """What the connection answered a request whose bytes turned out malformed mid-body."""

    __slots__ = ("message", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.message = ""


@dataclass(frozen=True)
class _Answer:
    """An answer the protocol itself gives (and then closes the connection)."""

    status: int
    message: str
    field: str | None
    error_type: str
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; `data_received` answers it."""

    def __init__(self, answer: _Answer) -> None:
        super().__init__(answer.reason)
        self.answer = answer


def parser_reason(exc: Exception) -> str:
    """The parser's reason, short and free of input (llhttp's reasons are fixed texts)."""
    text = _REASON_CHARS.sub("", str(exc)).strip()[:80]
    return text or "unparsable"


def error_bytes(answer: _Answer) -> bytes:
    """`answer` in the one error shape and its one spelling (`encode_error`)."""
    payload = error_payload(answer.message, answer.field, answer.status, answer.error_type)
    return encode_error(payload)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above; set by `install()`."""

    limits: ClassVar[Limits] = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # the next bytes belong to a request line or headers
        self._head_bytes = 0  # bytes of the current head fed to the parser
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._over_cap = False
        self._closed_by_us = False

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.limits.max_connections
        self._over_cap = bool(cap) and len(self.connections) > cap
        if self._over_cap and len(self.connections) > 2 * cap:
            # a flood: no file is held for an answer, so a worker never has more than twice
            # the cap open and its accept loop never meets its file limit
            self._closed_by_us = True
            metrics.CONNECTIONS_CLOSED.labels("connection_cap").inc()
            transport.close()
            return
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closed_by_us:
            return
        self._unset_keepalive_if_required()
        if self.cycle is None or self.cycle.response_complete:
            # a byte on a connection with no request in progress starts the clock (a next
            # request's head, or the unread rest of a body answered early)
            self._arm_deadline()
        view = memoryview(data)
        while view:
            if self._reading_head:
                room = self.limits.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse(self._too_large())
                    return
                piece, view = view[:room], view[room:]
                self._head_bytes += len(piece)
            else:
                piece, view = view, view[len(view) :]
            if not self._feed(piece):
                return

    def _feed(self, piece: memoryview) -> bool:
        """Parse `piece`; False when the connection was answered and closed."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.answer)
            else:
                self._malformed(exc)
            return False
        return not self._closed_by_us

    # --- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        self.scope[PROTOCOL_ERROR] = ProtocolError()  # type: ignore[literal-required]
        self._arm_deadline()  # a pipelined request's head starts its own clock

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _Refused(self._too_many())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._disarm_deadline()
        if self._over_cap:
            raise _Refused(self._overloaded())
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own plain-text 400, should it still call it: in the one shape."""
        self._refuse(self._malformed_answer("unparsable"))

    # --- deadline -----------------------------------------------------------------------

    def _arm_deadline(self) -> None:
        timeout = self.limits.header_timeout_s
        if timeout > 0 and self._deadline is None and not self._closed_by_us:
            self._deadline = self.loop.call_later(timeout, self._header_timeout)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timeout(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._closed_by_us:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request's head is late behind one in progress: that one is
            # answered, then the connection closes
            self.cycle.keep_alive = False
            return
        if self._head_bytes == 0:  # nothing of a request came: an idle connection
            self._closed_by_us = True
            metrics.CONNECTIONS_CLOSED.labels("idle").inc()
            self.transport.close()
            return
        timeout = self.limits.header_timeout_s
        self._refuse(
            _Answer(
                408,
                f"headers: not received within {timeout:g} s (HEADER_TIMEOUT_S); "
                "the connection is closed",
                "headers",
                "header_timeout",
                "header_timeout",
            )
        )

    # --- answers ------------------------------------------------------------------------

    def _too_large(self) -> _Answer:
        limit = self.limits.max_header_bytes
        return _Answer(
            431,
            f"headers: the request line and headers exceed {limit} bytes (MAX_HEADER_BYTES)",
            "headers",
            "headers_too_large",
            "header_bytes",
        )

    def _too_many(self) -> _Answer:
        return _Answer(
            431,
            f"headers: more than {self.limits.max_headers} header fields (MAX_HEADERS)",
            "headers",
            "headers_too_large",
            "header_count",
        )

    def _overloaded(self) -> _Answer:
        return _Answer(
            503,
            f"server: this worker has {self.limits.max_connections} connections open "
            "(MAX_CONNECTIONS_PER_WORKER); retry later",
            None,
            "overloaded",
            "connection_cap",
            ((b"retry-after", b"1"),),
        )

    @staticmethod
    def _malformed_answer(reason: str) -> _Answer:
        return _Answer(
            400, f"request: malformed HTTP ({reason})", None, "malformed_http", "malformed"
        )

    def _malformed(self, exc: Exception) -> None:
        reason = parser_reason(exc)
        log.warning("client %s sent malformed HTTP (%s): answered 400", self._client(), reason)
        answer = self._malformed_answer(reason)
        if not self._reading_head and self.cycle is not None:
            mark = self.cycle.scope.get(PROTOCOL_ERROR)
            if isinstance(mark, ProtocolError):  # the service is reading this request
                mark.status, mark.message = answer.status, answer.message
        self._refuse(answer)

    def _refuse(self, answer: _Answer) -> None:
        """Answer `answer` and close; only the close when another answer is under way on
        this connection (a byte of ours in it would corrupt it)."""
        if self._closed_by_us:
            return
        self._closed_by_us = True
        self._disarm_deadline()
        metrics.CONNECTIONS_CLOSED.labels(answer.reason).inc()
        if answer.reason != "malformed":  # logged at WARNING by `_malformed`
            log.info("client %s: %s (%d)", self._client(), answer.message, answer.status)
        busy = self.cycle is not None and not self.cycle.response_complete
        if not (busy and (self.cycle.response_started or self._reading_head)):
            self.transport.write(self._response(answer))
        self.transport.close()

    def _response(self, answer: _Answer) -> bytes:
        body = error_bytes(answer)
        head = [STATUS_LINE[answer.status]]
        for name, value in (
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *answer.headers,
            (b"connection", b"close"),
        ):
            head += [name, b": ", value, b"\r\n"]
        return b"".join([*head, b"\r\n", body])

    def _client(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "_"


def install(settings: Settings) -> bool:
    """Serve HTTP with `BoundedHttpToolsProtocol` in this process; True when it is in place.

    Call at service import, before uvicorn's `Config.load()` resolves its protocol class (in
    a BentoML worker, the service is imported first). `tests/unit/test_http_protocol.py`
    fails if a uvicorn upgrade moves the table this relies on.
    """
    protocols: dict[str, Any] | None = getattr(uvicorn_config, "HTTP_PROTOCOLS", None)
    if not isinstance(protocols, dict) or not {"auto", "httptools"} <= protocols.keys():
        log.warning("HTTP limits not installed: uvicorn has no HTTP_PROTOCOLS table")
        return False
    if httptools is None:
        log.warning(
            "HTTP limits not installed: httptools is missing, uvicorn serves with h11 "
            "(its own 16 KiB header bound, no header deadline, no connection cap)"
        )
        return False
    BoundedHttpToolsProtocol.limits = Limits.from_settings(settings)
    for name in ("auto", "httptools"):
        protocols[name] = BoundedHttpToolsProtocol
    return True
