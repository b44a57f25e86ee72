"""`POST /model/reload`: the operator's route to a new model version or a rollback.

An operator's route, not a client's: it needs `Authorization: Bearer <ADMIN_TOKEN>`, compared
in constant time (`hmac.compare_digest`, so the time taken says nothing about how much of a
guess was right). With no `ADMIN_TOKEN` configured the route is disabled and says so; a missing
or malformed header is 401, a wrong token 403; none of them changes anything (docs/api.md §8.4).
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from utils.api.errors import AdminRefused
from utils.api.model_info import worker_models
from utils.api.schemas import ReloadResponse
from utils.serving.reload import ReloadOutcome


def authorize(header: str | None, token: SecretStr | None) -> None:
    """Raise `AdminRefused` unless `header` is `Bearer <token>`."""
    if token is None:
        raise AdminRefused(403, "model reload is disabled: no ADMIN_TOKEN is configured")
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AdminRefused(401, "expected 'Authorization: Bearer <ADMIN_TOKEN>'")
    if not hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"),
        token.get_secret_value().encode("utf-8"),
    ):
        raise AdminRefused(403, "the token is not ADMIN_TOKEN")


def reload_response(outcome: ReloadOutcome) -> ReloadResponse:
    return ReloadResponse(
        result=outcome.result,
        bento_model_tag=outcome.served.tag,
        model_version=outcome.served.model_version,
        previous_bento_model_tag=outcome.previous.tag,
        previous_model_version=outcome.previous.model_version,
        generation=outcome.generation,
        workers=worker_models(outcome.workers),
        workers_agree=outcome.workers_agree,
    )
