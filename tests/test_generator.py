"""Generated tasks: solvable, reproducible, fast, and with the real rows' statistics."""

from __future__ import annotations

import json
import time

import pytest

from mlx_grpo.countdown.data import task_stats
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.solver import reaches
from mlx_grpo.countdown.tasks import Task

# statistic -> largest allowed |generated - real| (fractions in points of 1.0, means in units)
TOLERANCES = {
    "frac_size_3": 0.04,
    "frac_add_sub": 0.04,
    "frac_add_sub_size_3": 0.05,
    "frac_add_sub_size_4": 0.05,
    "frac_nums_le_10": 0.03,
    "frac_repeated_num": 0.03,
    "num_mean": 3.0,
    "target_mean": 3.0,
    "frac_integer_solvable": 0.0,
    "frac_solvable": 0.0,
}


@pytest.fixture(scope="module")
def generated() -> list[Task]:
    return generate_tasks(4000, seed=0)


@pytest.fixture(scope="module")
def real(shared_data) -> list[Task]:
    rows = [json.loads(line) for line in (shared_data / "countdown_real_sample.jsonl").open()]
    return [Task(row["target"], tuple(row["nums"])) for row in rows]


def test_statistics_match_the_real_rows(generated, real):
    ours, theirs = task_stats(generated), task_stats(real)
    for key, tolerance in TOLERANCES.items():
        assert abs(ours[key] - theirs[key]) <= tolerance, (key, ours[key], theirs[key])
    for key in ("num_min", "num_max", "target_min", "target_max"):
        assert ours[key] == theirs[key], key  # 1..99 and 10..100


def test_target_quarters_and_number_ranges_match(generated, real):
    def shares(values, edges):
        return [sum(lo <= v <= hi for v in values) / len(values) for lo, hi in edges]

    quarters = [(10, 32), (33, 55), (56, 78), (79, 100)]
    bands = [(1, 10), (11, 25), (26, 50), (51, 75), (76, 99)]
    for edges, pick in (
        (quarters, lambda ts: [t.target for t in ts]),
        (bands, lambda ts: [n for t in ts for n in t.nums]),
    ):
        for ours, theirs in zip(shares(pick(generated), edges), shares(pick(real), edges)):
            assert abs(ours - theirs) <= 0.03, (edges, ours, theirs)


def test_every_task_is_solvable_and_in_range(generated):
    for task in generated:
        assert len(task.nums) in (3, 4) and all(1 <= n <= 99 for n in task.nums)
        assert 10 <= task.target <= 100
        assert reaches(task.nums, task.target)


def test_reproducible_by_seed():
    assert generate_tasks(50, seed=3) == generate_tasks(50, seed=3)
    assert generate_tasks(50, seed=3) != generate_tasks(50, seed=4)
    assert generate_tasks(20, seed=3) == generate_tasks(50, seed=3)[:20]  # a prefix of a longer run


def test_fast_and_reports_progress():
    calls = []
    start = time.perf_counter()
    tasks = generate_tasks(2000, seed=1, progress=calls.append)
    elapsed = time.perf_counter() - start
    assert len(tasks) == 2000 and calls == [1] * 2000
    assert elapsed < 60.0, f"2,000 tasks took {elapsed:.1f} s (about 0.6 s expected; the bound only catches a blow-up)"


def test_sizes():
    assert generate_tasks(0, seed=0) == []
    with pytest.raises(ValueError):
        generate_tasks(-1, seed=0)
