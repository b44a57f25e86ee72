"""`AdminRoutes` (utils/asgi/admin_route.py): an operator's route checks the token from the
headers, before the body is read or validated, driven in-process through httpx's ASGI transport
in front of the recorder of `tests/unit/test_attack_middlewares.py`."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from tests.unit.test_attack_middlewares import Recorder, post_all
from utils.asgi.admin_route import AdminRoutes

TOKEN = "reload-unit-token-0123456789"


def admin_app(token: str | None) -> tuple[AdminRoutes, Recorder]:
    inner = Recorder()
    secret = SecretStr(token) if token is not None else None
    return AdminRoutes(inner, paths=("/model/reload",), token=secret), inner


@pytest.mark.parametrize(
    ("token", "headers", "status", "message"),
    [
        (None, {}, 403, "model reload is disabled: no ADMIN_TOKEN is configured"),
        (None, {"authorization": f"Bearer {TOKEN}"}, 403, "model reload is disabled"),
        (TOKEN, {}, 401, "expected 'Authorization: Bearer <ADMIN_TOKEN>'"),
        (TOKEN, {"authorization": f"Basic {TOKEN}"}, 401, "expected 'Authorization: Bearer"),
        (TOKEN, {"authorization": "Bearer "}, 401, "expected 'Authorization: Bearer"),
        (TOKEN, {"authorization": f"Bearer {TOKEN}x"}, 403, "the token is not ADMIN_TOKEN"),
    ],
)
def test_a_reload_without_the_token_is_refused_before_its_body_is_read(
    token: str | None, headers: dict[str, str], status: int, message: str
) -> None:
    app, inner = admin_app(token)
    (r,) = post_all(app, [("/model/reload", headers, False)])
    assert r.status_code == status
    body = r.json()
    assert body["field"] == "authorization" and message in body["error"]
    assert body["error"].startswith("authorization: ")
    assert r.headers["connection"] == "close"
    assert (r.headers.get("www-authenticate") == "Bearer") == (status == 401)
    assert inner.bodies == []  # the app never ran: no body read, nothing validated


def test_the_token_passes_and_other_paths_are_untouched() -> None:
    app, inner = admin_app(TOKEN)
    answers = post_all(
        app,
        [
            ("/model/reload", {"authorization": f"Bearer {TOKEN}"}, False),
            ("/predict", {}, False),
            ("/model/reload/", {}, False),  # not the route: routing answers it (404 there)
        ],
    )
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert inner.bodies == [b"{}", b"{}", b"{}"]


def test_two_authorization_headers_are_none() -> None:
    app, inner = admin_app(TOKEN)
    headers = [("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")]
    (r,) = post_all(app, [("/model/reload", headers, False)])  # type: ignore[list-item]
    assert r.status_code == 401 and inner.bodies == []
