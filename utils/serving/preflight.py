"""Refuse to start with one clear line instead of letting every worker crash and restart.

Runs wherever service.py is imported (the serve process before it spawns workers, and
`bentoml build`): a missing model, a missing file or a file whose sha256 differs from the
import's is reported once and the process exits non-zero.
"""

from __future__ import annotations

import bentoml

from utils.model.runtime import ModelLoadError, verify_model_files
from utils.model.served import StoredModel
from utils.serving.model_store import from_bento


def check_model_store(tag: str) -> StoredModel:
    """The store entry `tag` resolves to now (`latest` made concrete), its bytes verified."""
    try:
        stored = from_bento(bentoml.models.get(tag))
    except bentoml.exceptions.NotFound:
        raise SystemExit(
            f"rf_localization: model {tag} is not in the BentoML model store; "
            "import one with import_model.py or set BENTO_MODEL_TAG"
        ) from None
    try:
        verify_model_files(stored.path, stored.metadata)
    except ModelLoadError as exc:
        raise SystemExit(f"rf_localization: cannot serve {stored.tag}: {exc}") from None
    return stored
