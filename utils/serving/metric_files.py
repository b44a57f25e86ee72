"""The Prometheus multiprocess folder: read under a lock, dead workers' files merged into one.

In multiprocess mode every worker writes its own files (`counter_<pid>.db`,
`histogram_<pid>.db`, `gauge_<mode>_<pid>.db`) and every read parses all of them. A worker that
dies, killed or restarted, leaves its files behind, so each restart made every later read of
`/metrics` and `/model/info` dearer. `compact` folds a dead worker's counts into one merged
file per kind (`counter_merged.db`, ...), so the folder holds the live workers' files plus one
per kind, whatever the number of restarts:

- counters, histograms, summaries and `sum` gauges are added, key by key; `max` / `min`
  gauges keep the extreme; `mostrecent` gauges the latest write (its timestamp kept);
- `live*` gauges of a dead worker are dropped (prometheus_client's `mark_process_dead`);
- `all` gauges are left as they are: their `pid` label comes from the file name.

No count is lost or counted twice, even by a reader meeting a compaction half-way or a
compaction killed half-way: readers hold a shared lock on the folder and the compactor an
exclusive one, and the compactor writes its plan (which merged files replace which, which
files go) to a journal before touching a `.db` file, so the next compaction finishes a plan
that was interrupted (or drops merged files written before the plan, which nothing counted
yet). A worker is dead when no process has its pid; a pid reused by a new process keeps its
files unmerged until that process ends too.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import mark_process_dead

LOCK = ".compaction.lock"
JOURNAL = ".compaction.journal"
MERGED = "merged"
_FILE = re.compile(r"^(?P<kind>counter|histogram|summary|gauge_[a-z]+)_(?P<pid>\d+)\.db$")

#: how a kind's values from several files become one; kinds not listed are never merged
Merge = Callable[[tuple[float, float], tuple[float, float]], tuple[float, float]]
_MERGES: dict[str, Merge] = {
    "counter": lambda a, b: (a[0] + b[0], 0.0),
    "histogram": lambda a, b: (a[0] + b[0], 0.0),
    "summary": lambda a, b: (a[0] + b[0], 0.0),
    "gauge_sum": lambda a, b: (a[0] + b[0], 0.0),
    "gauge_max": lambda a, b: a if a[0] >= b[0] else b,
    "gauge_min": lambda a, b: a if a[0] <= b[0] else b,
    "gauge_mostrecent": lambda a, b: a if a[1] >= b[1] else b,
}


def alive(pid: int) -> bool:
    """A process with this pid exists (a zombie counts: its files are merged once reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def locked(directory: Path, exclusive: bool = False) -> Iterator[None]:
    """Hold the folder's lock: shared to read the files, exclusive to compact them."""
    with open(directory / LOCK, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compactable(kind: str) -> bool:
    """Files a compaction merges or drops (`all` gauges stay: their pid is a label)."""
    return kind in _MERGES or kind.startswith("gauge_live")


def dead_pids(directory: Path, is_alive: Callable[[int], bool] = alive) -> set[int]:
    """Pids whose process has ended with files a compaction would take (never this process)."""
    pids = set()
    for name in os.listdir(directory):
        match = _FILE.match(name)
        if match and _compactable(match["kind"]):
            pids.add(int(match["pid"]))
    pids.discard(os.getpid())
    return {pid for pid in pids if not is_alive(pid)}


def compact(directory: Path, is_alive: Callable[[int], bool] = alive) -> int:
    """Merge dead workers' files into the merged files; returns how many files went.

    Cheap when nothing is dead (a directory listing and a signal-0 per pid); takes the
    exclusive lock only when there is work.
    """
    journal = directory / JOURNAL
    if not dead_pids(directory, is_alive) and not journal.exists():
        return 0
    with locked(directory, exclusive=True):
        _finish(directory)  # a compaction killed half-way, if any
        dead = dead_pids(directory, is_alive)
        by_kind: dict[str, list[Path]] = {}
        gone: list[str] = []
        for name in sorted(os.listdir(directory)):
            match = _FILE.match(name)
            if match and int(match["pid"]) in dead and match["kind"] in _MERGES:
                by_kind.setdefault(match["kind"], []).append(directory / name)
                gone.append(name)
        replace = []
        for kind, files in by_kind.items():
            target = directory / f"{kind}_{MERGED}.db"
            _write_merged(directory / f"{target.name}.tmp", [target, *files], _MERGES[kind])
            replace.append([f"{target.name}.tmp", target.name])
        plan = directory / f"{JOURNAL}.tmp"
        plan.write_text(json.dumps({"replace": replace, "remove": gone}))
        os.replace(plan, journal)  # from here on the plan is carried out, now or next time
        _finish(directory)
        for pid in dead:  # their live* gauges: no longer live
            mark_process_dead(pid, str(directory))
        return len(gone)


def _write_merged(out: Path, files: list[Path], merge: Merge) -> None:
    values: dict[str, tuple[float, float]] = {}
    for path in files:
        if not path.exists():
            continue
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(path)):
            found = (value, timestamp)
            values[key] = merge(values[key], found) if key in values else found
    out.unlink(missing_ok=True)
    merged = MmapedDict(str(out))
    try:
        for key, (value, timestamp) in values.items():
            merged.write_value(key, value, timestamp)
    finally:
        merged.close()


def _finish(directory: Path) -> None:
    """Carry out a written plan (each step may already be done); without one, drop merged
    files a killed compaction wrote before its plan (no reader ever counted them)."""
    journal = directory / JOURNAL
    if not journal.exists():
        for stray in directory.glob("*.tmp"):
            stray.unlink(missing_ok=True)
        return
    plan = json.loads(journal.read_text())
    for tmp, target in plan["replace"]:
        if (directory / tmp).exists():
            os.replace(directory / tmp, directory / target)
    for name in plan["remove"]:
        (directory / name).unlink(missing_ok=True)
    journal.unlink()
