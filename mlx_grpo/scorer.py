"""Scoring held-out sets batch by batch, here or in a second process beside other work.

GRPO on the demo's bundled model computes on one core of a CPU, so on a machine with a spare core a
second process scores the baseline while GRPO trains, and the two processes share the final scoring
(each with one BLAS thread, `blas.use_one_thread`). Each batch is scored as `evaluate` scores it
(the same boundaries, every BATCH tasks from the start of its set, and the same seeds), so the
figures do not depend on which process scored which batch: `summarize` adds up the batches' counts.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from mlx_grpo.blas import use_one_thread
from mlx_grpo.countdown.tasks import Task

BATCH = 64  # tasks decoded together

Batch = tuple[str, int]  # (set name, first task's index in the set)


@dataclass(frozen=True)
class Scoring:
    """What the completions are sampled from and how (greedy)."""

    model: str
    adapter_path: str | None
    max_tokens: int
    enable_thinking: bool
    prefill: str


def batches(sets: dict[str, list[Task]]) -> list[Batch]:
    """Every batch of every set, in order."""
    return [(name, start) for name, tasks in sets.items() for start in range(0, len(tasks), BATCH)]


def score_batches(scoring: Scoring, sets: dict[str, list[Task]], todo: list[Batch], progress: bool = False) -> dict:
    """`{batch: (counts, samples)}` for each batch in `todo` (`evaluate.count_batches`' counts and its
    per-task samples), with the model loaded once."""
    from tqdm import tqdm

    from mlx_grpo.evaluate import count_batches
    from mlx_grpo.model import load_model

    model, tokenizer = load_model(scoring.model, adapter_path=scoring.adapter_path)
    out = {}
    for name, start in tqdm(todo, desc="eval", unit="batch", disable=not progress, leave=False):
        samples: list = []
        counts = count_batches(
            model,
            tokenizer,
            sets[name],
            [start],
            batch_size=BATCH,
            max_tokens=scoring.max_tokens,
            enable_thinking=scoring.enable_thinking,
            prefill=scoring.prefill,
            samples=samples,
        )
        out[(name, start)] = (counts, samples)
    return out


def summarize(sets: dict[str, list[Task]], scored: dict) -> dict:
    """Per set, `evaluate`'s figures from its batches' counts, and the set's first completion (in task
    order) that rejects a candidate of its own and then solves the task (None when there is none)."""
    from mlx_grpo.evaluate import COUNTS, rates

    result = {}
    for name, tasks in sets.items():
        mine = sorted((start, value) for (set_name, start), value in scored.items() if set_name == name)
        if [start for start, _ in mine] != list(range(0, len(tasks), BATCH)):
            raise ValueError(f"{name}: scored batches {[s for s, _ in mine]} do not cover its {len(tasks)} tasks")
        counts = {k: sum(c[k] for _, (c, _) in mine) for k in COUNTS}
        samples = [s for _, (_, batch_samples) in mine for s in batch_samples]
        result[name] = rates(counts, len(tasks))
        result[name]["first_self_correction"] = next((s for s in samples if s["correct"] and s["self_check"]), None)
    return result


def spare_core() -> bool:
    """A second process can score beside this one: MLX computes on the CPU and there are 2+ cores."""
    import mlx.core as mx

    return mx.default_device() == mx.cpu and (os.cpu_count() or 1) >= 2


class Worker:
    """One spawned process that runs submitted calls in order (a `with` block owns it).

    Both processes compute with one BLAS thread while the block runs. The worker ignores Ctrl-C (the
    main process handles it, and leaving the block terminates the worker), and it imports everything
    afresh: MLX's threads do not survive a fork.
    """

    def __enter__(self) -> Worker:
        self._pool = multiprocessing.get_context("spawn").Pool(1, initializer=_start_worker)
        use_one_thread()
        return self

    def submit(self, fn: Callable, *args):
        """Queue `fn(*args)`; the returned handle's `.get()` waits for the value (or raises its error)."""
        return self._pool.apply_async(fn, args)

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self._pool.close()  # every result was waited for: the worker exits by itself
        else:
            self._pool.terminate()  # the block failed or was interrupted: stop the worker mid-batch
        self._pool.join()


def _start_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    use_one_thread()
