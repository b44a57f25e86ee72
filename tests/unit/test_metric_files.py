"""utils/serving/metric_files.py: dead workers' Prometheus files merged without losing a count,
even when a compaction is killed half-way (real prometheus_client files in a temporary folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from utils.serving import metric_files

LIVE, DEAD_A, DEAD_B = 101, 202, 303
HELP = "h"


def key(metric: str, name: str, labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    return mmap_key(metric, name, list(labels), list(labels.values()), HELP)


def write(folder: Path, kind: str, pid: int, values: dict[str, tuple[float, float]]) -> None:
    store = MmapedDict(str(folder / f"{kind}_{pid}.db"))
    for k, (value, timestamp) in values.items():
        store.write_value(k, value, timestamp)
    store.close()


def worker(folder: Path, pid: int, scale: float) -> None:
    """The files one worker leaves: a labelled counter, a histogram, three kinds of gauge."""
    write(
        folder,
        "counter",
        pid,
        {
            key("req", "req_total", {"code": "200"}): (3 * scale, 0.0),
            key("req", "req_total", {"code": "500"}): (scale, 0.0),
        },
    )
    write(
        folder,
        "histogram",
        pid,
        {
            key("lat", "lat_bucket", {"le": "0.1"}): (2 * scale, 0.0),
            key("lat", "lat_bucket", {"le": "+Inf"}): (scale, 0.0),
            key("lat", "lat_sum", {}): (0.5 * scale, 0.0),
        },
    )
    write(folder, "gauge_mostrecent", pid, {key("model", "model", {"v": "1"}): (scale, pid)})
    write(folder, "gauge_livesum", pid, {key("busy", "busy"): (1.0, 0.0)})
    write(folder, "gauge_all", pid, {key("per_worker", "per_worker"): (scale, 0.0)})


def exposed(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What /metrics would show: every aggregated sample."""
    collector = MultiProcessCollector(None, path=str(folder))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


def alive_only(*pids: int):  # noqa: ANN201 - a predicate
    return lambda pid: pid in pids


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for pid, scale in ((LIVE, 1.0), (DEAD_A, 10.0), (DEAD_B, 100.0)):
        worker(tmp_path, pid, scale)
    return tmp_path


def without_live_gauges(values: dict) -> dict:
    return {k: v for k, v in values.items() if k[0] != "busy"}


def test_dead_workers_files_fold_into_one_per_kind_and_every_count_stays(folder: Path) -> None:
    before = exposed(folder)
    assert before[("busy", ())] == 3.0  # each live* gauge counted, the dead ones' included
    assert metric_files.compact(folder, alive_only(LIVE)) == 6  # counter, histogram, mostrecent
    after = exposed(folder)
    assert without_live_gauges(after) == without_live_gauges(before)
    assert after[("busy", ())] == 1.0  # a dead worker is no longer busy
    assert after[("model", (("v", "1"),))] == 100.0  # the latest write (timestamp) kept
    names = sorted(p.name for p in folder.glob("*.db"))
    assert names == sorted(
        [
            *(f"{k}_{LIVE}.db" for k in ("counter", "histogram", "gauge_mostrecent")),
            *(f"{k}_{LIVE}.db" for k in ("gauge_livesum", "gauge_all")),
            *(f"gauge_all_{pid}.db" for pid in (DEAD_A, DEAD_B)),  # pid is their label
            "counter_merged.db",
            "histogram_merged.db",
            "gauge_mostrecent_merged.db",
        ]
    )
    assert metric_files.dead_pids(folder, alive_only(LIVE)) == set()  # gauge_all files stay
    assert metric_files.compact(folder, alive_only(LIVE)) == 0  # nothing left to do
    assert not (folder / metric_files.JOURNAL).exists()  # nor the lock taken to find that out


def test_a_second_compaction_adds_to_the_merged_files(folder: Path) -> None:
    before = exposed(folder)
    metric_files.compact(folder, alive_only(LIVE, DEAD_B))  # DEAD_A first
    metric_files.compact(folder, alive_only(LIVE))  # then DEAD_B
    assert without_live_gauges(exposed(folder)) == without_live_gauges(before)
    assert not list(folder.glob(f"counter_{DEAD_B}.db"))


def test_a_compaction_killed_after_its_plan_is_finished_by_the_next(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between replacing a merged file and removing the files it took in: the next
    compaction (any worker's, before its read) completes the plan, nothing counted twice."""
    before = without_live_gauges(exposed(folder))
    real_replace = os.replace
    replaced: list[str] = []

    def dying_replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        merged = str(dst).endswith("_merged.db")
        if merged and replaced:
            raise KeyboardInterrupt  # the process dies at the second merged file
        real_replace(src, dst)
        if merged:
            replaced.append(str(dst))

    monkeypatch.setattr(metric_files.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        metric_files.compact(folder, alive_only(LIVE))
    monkeypatch.setattr(metric_files.os, "replace", real_replace)
    assert (folder / metric_files.JOURNAL).exists()
    assert without_live_gauges(exposed(folder)) != before  # half done: the plan must finish
    metric_files.compact(folder, alive_only(LIVE))
    assert without_live_gauges(exposed(folder)) == before
    assert not (folder / metric_files.JOURNAL).exists() and not list(folder.glob("*.tmp"))


def test_a_compaction_killed_before_its_plan_leaves_the_counts_alone(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = without_live_gauges(exposed(folder))
    real_write = metric_files._write_merged
    written: list[Path] = []

    def dying_write(out: Path, *args: object) -> None:
        if written:
            raise KeyboardInterrupt
        real_write(out, *args)  # type: ignore[arg-type]
        written.append(out)

    monkeypatch.setattr(metric_files, "_write_merged", dying_write)
    with pytest.raises(KeyboardInterrupt):
        metric_files.compact(folder, alive_only(LIVE))
    monkeypatch.setattr(metric_files, "_write_merged", real_write)
    assert written and written[0].exists()  # a merged file no reader counts (.tmp)
    assert without_live_gauges(exposed(folder)) == before
    metric_files.compact(folder, alive_only(LIVE))
    assert without_live_gauges(exposed(folder)) == before
    assert not list(folder.glob("*.tmp"))


def test_this_process_and_live_pids_are_never_dead(tmp_path: Path) -> None:
    worker(tmp_path, os.getpid(), 1.0)
    worker(tmp_path, LIVE, 1.0)
    assert metric_files.dead_pids(tmp_path, alive_only()) == {LIVE}  # never os.getpid()
    assert metric_files.alive(os.getpid())
