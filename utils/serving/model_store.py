"""The BentoML model store, read through its public API only (`bentoml.models.get`).

Kept apart from `utils/model/served.py` so that the loading and checking of a model stays
framework-free and unit-testable, while tag resolution follows BentoML's own rules (`latest`,
valid tag characters) instead of a copy of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import bentoml

from utils.model.served import StoredModel


class UnknownModel(LookupError):
    """The tag is malformed, of another model, or not in this store; `status` for the API."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


#: A tag's name or version, BentoML's grammar: lowercase letters, digits, `-`, `_` and `.`,
#: starting and ending with a letter or digit, at most 63 characters.
_TAG_PART = re.compile(r"[a-z0-9](?:[-._a-z0-9]{0,61}[a-z0-9])?")
TAG_FORM = (
    "must be `<name>:<version>` or `<version>`, each of lowercase letters, digits, '-', '_' "
    "and '.', starting and ending with a letter or digit, at most 63 characters"
)


def full_tag(name: str, tag: str | None) -> str:
    """`None` -> `<name>:latest`; a bare version -> `<name>:<version>`; `<name>:<v>` as is.
    Checked before the store is touched: a malformed tag (`../x`, BentoML refused it with a
    500) and another model's name are 400; a service serves versions of one model. No
    message repeats the tag."""
    if tag is None:
        return f"{name}:latest"
    given, colon, version = tag.rpartition(":")
    if not _TAG_PART.fullmatch(version) or (colon and not _TAG_PART.fullmatch(given)):
        raise UnknownModel(TAG_FORM, 400)
    if colon and given != name:
        raise UnknownModel(f"not a version of {name}, the model this service serves", 400)
    return f"{name}:{version}"


def stored(name: str, tag: str | None) -> StoredModel:
    """The store entry for `tag` (see `full_tag`), resolved to its concrete version."""
    wanted = full_tag(name, tag)
    try:
        model = bentoml.models.get(wanted)
    except ValueError:  # a form `full_tag` lets through and BentoML does not: no such model
        raise UnknownModel(TAG_FORM, 400) from None
    except bentoml.exceptions.NotFound:
        raise UnknownModel(f"no such version of {name} in the BentoML model store", 404) from None
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
