"""`ClientGone` and `InternalRoutes` (utils/asgi/), driven in-process without a server.

`InternalRoutes` is called through httpx's ASGI transport, the transport BentoML's in-process
client uses for `self.to_async.infer`. `ClientGone` is given the messages a server passes when a
client leaves mid-body (part of the body, then `http.disconnect`), in front of a Starlette app
that reads its body as BentoML's handler does.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.asgi import Recorder
from utils.asgi.body_size_limit import BodySizeLimit
from utils.asgi.client_gone import CLIENT_CLOSED, ClientGone
from utils.asgi.internal_route import InternalRoutes, internal_call, is_internal
from utils.serving.departure import SCOPE_KEY as DEPARTURE_KEY
from utils.serving.departure import ClientLeft

TOKEN = "s3cret-token"

# --------------------------------------------------------------------------- InternalRoutes


def internal_app(token: str | None) -> tuple[ASGIApp, Recorder]:
    inner = Recorder()
    secret = SecretStr(token) if token is not None else None
    return InternalRoutes(inner, paths=("/infer",), token=secret), inner


def post_all(
    app: ASGIApp, requests: list[tuple[str, dict[str, str], bool]]
) -> list[httpx.Response]:
    """POST each (path, headers, as the service's own call) in turn, on one client."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            out = []
            for path, headers, own in requests:
                if own:
                    out.append(
                        await internal_call(client.post, path, content=b"{}", headers=headers)
                    )
                else:
                    out.append(await client.post(path, content=b"{}", headers=headers))
            return out

    return asyncio.run(go())


def test_the_services_own_call_passes_without_credentials() -> None:
    for token in (None, TOKEN):
        app, inner = internal_app(token)
        (own,) = post_all(app, [("/infer", {}, True)])
        assert own.status_code == 200 and inner.bodies == [b"{}"]


@pytest.mark.parametrize(
    ("token", "headers", "status", "message"),
    [
        (None, {}, 403, "/infer is internal to the service"),
        (None, {"authorization": f"Bearer {TOKEN}"}, 403, "no ADMIN_TOKEN configured"),
        (TOKEN, {}, 401, "expected 'Authorization: Bearer <ADMIN_TOKEN>'"),
        (TOKEN, {"authorization": f"Basic {TOKEN}"}, 401, "expected 'Authorization: Bearer"),
        (TOKEN, {"authorization": "Bearer wrong"}, 403, "the token is not ADMIN_TOKEN"),
    ],
)
def test_an_outside_call_is_refused_before_its_body_is_read(
    token: str | None, headers: dict[str, str], status: int, message: str
) -> None:
    app, inner = internal_app(token)
    (r,) = post_all(app, [("/infer", headers, False)])
    assert r.status_code == status
    body = r.json()
    assert body["field"] == "authorization" and message in body["error"]
    assert body["error"].startswith("authorization: ")
    assert r.headers["connection"] == "close"
    assert ("www-authenticate" in r.headers) == (status == 401)
    assert inner.bodies == []  # the app never ran: no body read, nothing inferred


def test_an_operator_with_the_admin_token_passes_and_other_paths_are_untouched() -> None:
    app, inner = internal_app(TOKEN)
    answers = post_all(
        app,
        [
            ("/infer", {"authorization": f"Bearer {TOKEN}"}, False),
            ("/predict", {}, False),
            ("/infer/", {}, False),  # not the internal path: routing answers it (404 there)
        ],
    )
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert len(inner.bodies) == 3


def test_the_mark_does_not_outlive_the_call() -> None:
    app, inner = internal_app(None)
    answers = post_all(app, [("/infer", {}, True), ("/infer", {}, False), ("/infer", {}, True)])
    assert [r.status_code for r in answers] == [200, 403, 200]
    assert not is_internal()

    async def after_a_failure() -> bool:
        async def boom() -> None:
            raise RuntimeError("down")

        with pytest.raises(RuntimeError):
            await internal_call(boom)
        return is_internal()

    assert asyncio.run(after_a_failure()) is False


# --------------------------------------------------------------------------- ClientGone


async def _read_json(request: Request) -> JSONResponse:
    """Reads the body as BentoML's handler does; any failure is its 500, as BentoML answers."""
    try:
        data = await request.json()
    except Exception:  # noqa: BLE001 - BentoML turns every exception into a 500
        return JSONResponse({"error": "An unexpected error has occurred"}, status_code=500)
    return JSONResponse({"items": len(data)})


async def _read_then_wait(request: Request) -> JSONResponse:
    """Reads the whole body, then waits for the client to leave (as a long inference would)."""
    await request.body()
    message = await request.receive()
    return JSONResponse({"then": message["type"]})


SERVICE = Starlette(
    routes=[
        Route("/predict", _read_json, methods=["POST"]),
        Route("/wait", _read_then_wait, methods=["POST"]),
    ]
)


def disconnects(phase: str) -> float:
    return REGISTRY.get_sample_value("rfloc_client_disconnects_total", {"phase": phase}) or 0.0


@pytest.fixture()
def service_log() -> Iterator[io.StringIO]:
    logger = logging.getLogger("bentoml.service.localization")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield buffer
    logger.removeHandler(handler)
    logger.setLevel(level)


def drive(app: ASGIApp, path: str, messages: list[Message]) -> list[Message]:
    """One request to `app` whose `receive` yields `messages` (then the client is gone for
    good, as a server reports it); returns every message the app sent out."""
    sent: list[Message] = []
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "client": ("10.0.0.7", 51234),
        "server": ("127.0.0.1", 3000),
    }
    asyncio.run(app(scope, receive, send))
    return sent


def statuses(sent: list[Message]) -> list[int]:
    return [m["status"] for m in sent if m["type"] == "http.response.start"]


def test_a_client_gone_mid_body_is_answered_499_once_logged_and_counted(
    service_log: io.StringIO,
) -> None:
    before = disconnects("body")
    sent = drive(
        ClientGone(SERVICE),
        "/predict",
        [{"type": "http.request", "body": b'{"iq_b64": "AAAA', "more_body": True}],
    )
    assert statuses(sent) == [CLIENT_CLOSED]  # the service's 500 was dropped
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"].endswith("body")))
    assert body["error"].startswith("client closed request")
    assert disconnects("body") - before == 1
    lines = service_log.getvalue().splitlines()
    assert lines == [
        "INFO client 10.0.0.7:51234 went away mid-body: POST /predict after 16 body bytes; "
        "not answered (499)"
    ]


def test_an_app_that_returns_without_answering_a_gone_client_gets_499_too() -> None:
    """IQFastPath returns silently when the client left while it buffered the body."""

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    before = disconnects("body")
    sent = drive(ClientGone(silent), "/predict", [{"type": "http.request", "more_body": True}])
    assert statuses(sent) == [CLIENT_CLOSED] and disconnects("body") - before == 1


def test_a_client_gone_after_its_body_is_counted_as_before_the_answer(
    service_log: io.StringIO,
) -> None:
    before = disconnects("response")
    sent = drive(ClientGone(SERVICE), "/wait", [{"type": "http.request", "body": b"{}"}])
    assert statuses(sent) == [CLIENT_CLOSED] and disconnects("response") - before == 1
    assert "went away before the answer: POST /wait after 2 body bytes" in service_log.getvalue()


def test_a_whole_request_and_a_413_pass_untouched_and_uncounted(
    service_log: io.StringIO,
) -> None:
    before = disconnects("body") + disconnects("response")
    whole = drive(ClientGone(SERVICE), "/predict", [{"type": "http.request", "body": b"[1, 2, 3]"}])
    assert statuses(whole) == [200]
    assert json.loads(whole[-1]["body"]) == {"items": 3}
    # BodySizeLimit inside: the service cut the body short and answered; nobody went away
    limited = BodySizeLimit(SERVICE, limits=lambda path: (8, "MAX_REQUEST_BYTES"))
    refused = drive(
        ClientGone(limited),
        "/predict",
        [
            {"type": "http.request", "body": b"[1, 2, 3, 4", "more_body": True},
            {"type": "http.request", "body": b", 5]", "more_body": False},
        ],
    )
    assert statuses(refused) == [413]
    assert disconnects("body") + disconnects("response") == before
    assert service_log.getvalue() == ""


def test_a_gone_client_after_the_answer_started_is_not_a_departure() -> None:
    async def answers_first(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await receive()  # the client then leaves
        await send({"type": "http.response.body", "body": b"late"})

    before = disconnects("body")
    sent = drive(ClientGone(answers_first), "/predict", [])
    assert statuses(sent) == [202] and sent[-1]["body"] == b"late"
    assert disconnects("body") == before


def test_other_exceptions_still_propagate() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("a server fault")

    with pytest.raises(RuntimeError, match="a server fault"):
        drive(ClientGone(broken), "/predict", [])  # gone, but a fault is still a fault


async def _waits_for_inference(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the body, then waits as a queued prediction does, never reading `receive()`;
    skips its work if its client left (as the pipeline and the greedy batcher do)."""
    await receive()
    departure = scope.get(DEPARTURE_KEY)
    if departure is None:  # not a watched route: nothing tells it the client left
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"computed"})
        return
    departure.watch()  # it has to queue: the greedy batcher asks for a watcher
    while not departure.gone:  # the watcher sees the disconnect for it
        await asyncio.sleep(0)
    with pytest.raises(ClientLeft):
        departure.check()
    await send({"type": "http.response.start", "status": 499, "headers": []})
    await send({"type": "http.response.body", "body": b"dropped"})


def test_a_client_gone_while_its_request_waits_is_seen_and_counted_as_queued(
    service_log: io.StringIO,
) -> None:
    before = disconnects("queued"), disconnects("response")
    app = ClientGone(_waits_for_inference, watch=("/predict",))
    sent = drive(app, "/predict", [{"type": "http.request", "body": b"{}"}])
    assert statuses(sent) == [CLIENT_CLOSED]  # its own answer dropped, one 499 for the logs
    assert (disconnects("queued"), disconnects("response")) == (before[0] + 1, before[1])
    assert "went away before inference (skipped): POST /predict" in service_log.getvalue()
    # a route not watched gets no departure and no watcher: it computes, as before
    other = drive(app, "/ellipse", [{"type": "http.request", "body": b"{}"}])
    assert statuses(other) == [200] and other[-1]["body"] == b"computed"
