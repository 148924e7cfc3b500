"""bench/ab.py's settings for side B (`--set ROLE=NICE[:batch]`, `--pin ROLE=CPU,...`): pure
logic, no server."""

import os

import pytest

from bench import ab


def test_nice_policy_and_cpus_combine_by_role():
    settings = ab.parse_settings(["engine=15:batch", "worker=0"], ["server=1", "engine=0,1"])
    assert settings == {
        "engine": ab.Scheduling(15, os.SCHED_BATCH, frozenset({0, 1})),
        "worker": ab.Scheduling(0, os.SCHED_OTHER, None),
        "server": ab.Scheduling(None, None, frozenset({1})),
    }
    assert ab.describe(settings) == (
        "engine: nice 15 SCHED_BATCH CPUs 0,1; worker: nice 0 SCHED_OTHER; server: CPUs 1"
    )


@pytest.mark.parametrize(
    ("sets", "pins"), [(["engine=15:fifo"], []), (["engine=high"], []), ([], ["engine=0-1"])]
)
def test_a_setting_that_is_not_understood_is_refused_by_name(sets, pins):
    with pytest.raises(ValueError, match="engine="):
        ab.parse_settings(sets, pins)
