"""How the workers of one `bentoml serve` agree on the model they serve: a shared folder.

`POST /model/reload` reaches one worker. That worker checks the new model, swaps it in, and
records the wanted model in `desired.json` (a generation number, the concrete tag); every worker
polls that file and takes up a newer generation, and writes what it serves to
`worker-<pid>.json`, which `/model/info` reads to say whether all workers agree. A file rather
than Redis pub/sub because it needs no service (the cache's Redis is optional), a worker that
starts or restarts after a reload reads the wanted model before it loads anything, and a message
cannot be missed.

The folder is created by the serve process when it imports `service.py`, before it spawns its
workers, and handed to them in an environment variable (workers inherit the environment);
it lives as long as that process, so a reload lasts until the service restarts (README,
"Model updates"). Writes are atomic (`os.replace`) and read-modify-write goes under `flock`.

Reloads are serialised across the workers by a second lock, `reload.lock`, held by the one
worker reloading from before it resolves the tag until every worker has answered: two reloads
to different tags cannot interleave, so an answer names the model every worker then serves
(issue 28, item 7). It is taken without blocking (`try_lock_reload`) so that the event loop
holding it keeps serving, and `flock` releases it when its process dies.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ValidationError

#: Set by the serve process for its workers; not a user setting.
ENV_VAR = "_RFLOC_MODEL_CONTROL_DIR"


class DesiredModel(BaseModel):
    """The model all workers should serve."""

    generation: int
    tag: str
    #: The store's newest import when the watch last looked (`MODEL_WATCH_SECONDS`): a watch
    #: reacts to a new import, not to a rollback away from the newest one.
    watched_latest: str | None = None
    requested_by: str = "start"


class WorkerStatus(BaseModel):
    """What one worker serves, and why not the desired model when it failed to load it."""

    pid: int
    bento_model_tag: str
    model_version: str
    loaded_at: str
    generation: int
    error: str | None = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ReloadLock:
    """`reload.lock` held by this process (see the module docstring); `release` it once."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def release(self) -> None:
        try:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        finally:
            self._handle.close()


class ModelControl:
    """The shared folder of one serve process (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._desired = folder / "desired.json"
        self._lock = folder / "desired.lock"
        self._reload_lock = folder / "reload.lock"

    @classmethod
    def for_serve_process(cls) -> tuple[ModelControl, bool]:
        """(the folder, whether this process created it). The first import of `service.py`
        in a process tree creates it; workers find it in their inherited environment."""
        inherited = os.environ.get(ENV_VAR)
        if inherited and Path(inherited).is_dir():
            return cls(Path(inherited)), False
        folder = Path(tempfile.mkdtemp(prefix="rfloc-models-"))
        os.environ[ENV_VAR] = str(folder)
        owner = os.getpid()

        def remove() -> None:
            if os.getpid() == owner:  # not in a forked child
                shutil.rmtree(folder, ignore_errors=True)

        atexit.register(remove)
        return cls(folder), True

    # --- the desired model ---------------------------------------------------------------------
    def desired(self) -> DesiredModel | None:
        try:
            return DesiredModel.model_validate_json(self._desired.read_bytes())
        except (FileNotFoundError, ValidationError):
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def update(
        self, change: Callable[[DesiredModel | None], DesiredModel | None]
    ) -> DesiredModel | None:
        """Read-modify-write under the lock; `change` returns the new record or None to
        leave the file as it is. Returns the record in force afterwards."""
        with self._locked():
            current = self.desired()
            new = change(current)
            if new is None:
                return current
            _write_atomic(self._desired, new.model_dump_json())
            return new

    def initialize(self, tag: str, watched_latest: str | None) -> DesiredModel:
        """Generation 0, the model the service starts with, unless a record exists (a worker
        that restarts after a reload must take up the reloaded model, not the start one)."""

        def first(current: DesiredModel | None) -> DesiredModel | None:
            if current is not None:
                return None
            return DesiredModel(generation=0, tag=tag, watched_latest=watched_latest)

        result = self.update(first)
        assert result is not None
        return result

    def publish(self, tag: str, requested_by: str) -> DesiredModel:
        """A new generation wanting `tag`; the watch's memory is kept."""

        def bump(current: DesiredModel | None) -> DesiredModel:
            return DesiredModel(
                generation=(current.generation + 1) if current else 1,
                tag=tag,
                watched_latest=current.watched_latest if current else None,
                requested_by=requested_by,
            )

        result = self.update(bump)
        assert result is not None
        return result

    # --- one reload at a time, across the workers -------------------------------------------------
    def try_lock_reload(self) -> ReloadLock | None:
        """The reload lock if no reload (of any worker, or of this one) holds it, else None.
        Each call opens its own file description, so two holders in one process exclude
        each other too."""
        handle = self._reload_lock.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return ReloadLock(handle)

    # --- what each worker serves -----------------------------------------------------------------
    def report(self, status: WorkerStatus) -> None:
        _write_atomic(self.folder / f"worker-{status.pid}.json", status.model_dump_json())

    def workers(self) -> list[WorkerStatus]:
        """Live workers' reports, by pid; reports of workers that died are removed."""
        found: list[WorkerStatus] = []
        for path in sorted(self.folder.glob("worker-*.json")):
            try:
                status = WorkerStatus.model_validate_json(path.read_bytes())
            except (FileNotFoundError, ValidationError):
                continue
            if _alive(status.pid):
                found.append(status)
            else:
                path.unlink(missing_ok=True)
        return sorted(found, key=lambda s: s.pid)
