"""benchmarks/compare.py's policy names: how a benchmark says which server settings it runs."""

from __future__ import annotations

from benchmarks.compare import policy_env


def test_policy_names_become_the_environment_they_serve_with() -> None:
    assert policy_env("greedy") == {"BATCH_DISPATCH": "greedy"}
    assert policy_env("greedy/1@auto") == {
        "BATCH_DISPATCH": "greedy",
        "BATCH_MAX_SIZE": "1",
        "BATCH_QUEUE_DELAY_MS": "auto",
    }
    assert policy_env("greedy+GC_FREEZE=false+GC_FULL_MAX_INTERVAL_S=0") == {
        "BATCH_DISPATCH": "greedy",
        "GC_FREEZE": "false",
        "GC_FULL_MAX_INTERVAL_S": "0",
    }
    assert policy_env("cork/4+BATCH_ON_LOOP=false")["BATCH_ON_LOOP"] == "false"
