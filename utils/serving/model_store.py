"""The BentoML model store, read through its public API only (`bentoml.models.get`).

Kept apart from `utils/model/served.py` so that the loading and checking of a model stays
framework-free and unit-testable, while tag resolution follows BentoML's own rules (`latest`,
valid tag characters) instead of a copy of them.
"""

from __future__ import annotations

from pathlib import Path

import bentoml

from utils.model.served import StoredModel


class UnknownModel(LookupError):
    """The tag is malformed, of another model, or not in this store; `status` for the API."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


def full_tag(name: str, tag: str | None) -> str:
    """`None` -> `<name>:latest`; a bare version -> `<name>:<version>`; `<name>:<v>` as is.
    Another model's name is refused: a service serves versions of one model."""
    if not tag:
        return f"{name}:latest"
    if ":" not in tag:
        return f"{name}:{tag}"
    if tag.split(":", 1)[0] != name:
        raise UnknownModel(f"{tag} is not a version of {name}, the model this service serves", 400)
    return tag


def stored(name: str, tag: str | None) -> StoredModel:
    """The store entry for `tag` (see `full_tag`), resolved to its concrete version."""
    wanted = full_tag(name, tag)
    try:
        model = bentoml.models.get(wanted)
    except ValueError as exc:  # BentoML's message says which characters a tag may use
        raise UnknownModel(str(exc), 400) from None
    except bentoml.exceptions.NotFound:
        raise UnknownModel(f"{wanted} is not in the BentoML model store", 404) from None
    return from_bento(model)


def from_bento(model: bentoml.Model) -> StoredModel:
    """A store entry (`bentoml.models.get`, or the service's `BentoModel` once resolved)."""
    return StoredModel(
        tag=str(model.tag),
        name=model.tag.name,
        version=str(model.tag.version),
        path=Path(model.path),
        metadata=dict(model.info.metadata),
        created_at=model.info.creation_time.isoformat(),
    )


def latest_tag(name: str) -> str | None:
    """The newest import of `name`, or None when the store has none (the store watch)."""
    try:
        return str(bentoml.models.get(f"{name}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None
