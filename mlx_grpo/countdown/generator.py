"""Random Countdown tasks with the statistics of `Jiayi-Pan/Countdown-Tasks-3to4`.

The process is the one of the Stream-of-Search generator that the dataset's rows match (measured on
the 2,000 real rows in ../shared/data/countdown_real_sample.jsonl; see tests/test_generator.py):

1. the size is 3 or 4 with equal odds (real rows: 48.8% / 51.2%);
2. the target is uniform on 10..100 (all 91 values occur, none stands out);
3. the numbers are uniform on 1..99, drawn again and again until some expression over all of them
   reaches the target with every intermediate result a non-negative integer (every real row is
   solvable that way). This rejection is what makes small numbers more common (1-10 is about twice
   as frequent as 91-99) and makes about 70% of 3-number and 35% of 4-number tasks solvable with
   + and - alone, as in the real rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from mlx_grpo.countdown.solver import reaches
from mlx_grpo.countdown.tasks import Task

SIZES = (3, 4)
NUM_RANGE = (1, 99)
TARGET_RANGE = (10, 100)


def generate_tasks(n: int, seed: int, *, progress: Callable[[int], None] | None = None) -> list[Task]:
    """Generate `n` solvable tasks, the same ones for the same `seed`.

    Args:
        n: how many tasks (>= 0).
        seed: seed of the `random.Random` that draws everything.
        progress: called with 1 after each task (for a progress bar), if given.

    Returns:
        A list of `n` Tasks; each one is reachable with non-negative integer intermediate results.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    tasks = []
    for _ in range(n):
        size = rng.choice(SIZES)
        target = rng.randint(*TARGET_RANGE)
        while True:
            nums = tuple(rng.randint(*NUM_RANGE) for _ in range(size))
            if reaches(nums, target):
                break
        tasks.append(Task(target=target, nums=nums))
        if progress is not None:
            progress(1)
    return tasks
