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
from typing import NoReturn

from mlx_grpo.blas import use_one_thread
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.errors import UserError

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
        if [start for start, _ in mine] != [start for _, start in batches({name: tasks})]:
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
    afresh: MLX's threads do not survive a fork. A worker that dies (killed, out of memory) fails the
    wait for its result with one line, where a `multiprocessing.Pool` would wait forever.
    """

    def __enter__(self) -> Worker:
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(theirs,), daemon=True)
        self._process.start()
        theirs.close()
        self._submitted = 0
        self._returned: dict[int, tuple[bool, object]] = {}  # job -> (succeeded, value or error)
        use_one_thread()
        return self

    @property
    def pid(self) -> int:
        return self._process.pid

    def submit(self, fn: Callable, *args) -> Pending:
        """Queue `fn(*args)`; the returned handle's `.get()` waits for the value (or raises its error)."""
        job = self._submitted
        self._conn.send((job, fn, args))
        self._submitted += 1
        return Pending(self, job)

    def result(self, job: int):
        while job not in self._returned:
            while not self._conn.poll(1.0):
                if not self._process.is_alive():
                    self._died()
            try:
                done, succeeded, value = self._conn.recv()
            except (EOFError, OSError):  # the worker's end closed: it died mid-message
                self._process.join(5)
                self._died()
            self._returned[done] = (succeeded, value)
        succeeded, value = self._returned.pop(job)
        if not succeeded:
            raise value
        return value

    def _died(self) -> NoReturn:
        raise UserError(f"the second (scoring) process stopped, exit code {self._process.exitcode}")

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self._conn.send(None)  # no more work: the worker returns
        else:
            self._process.terminate()  # the block failed or was interrupted: stop the worker mid-batch
        self._process.join()
        self._conn.close()


@dataclass(frozen=True)
class Pending:
    """A call submitted to a `Worker`."""

    worker: Worker
    job: int

    def get(self):
        return self.worker.result(self.job)


def _serve(conn) -> None:
    """The worker's loop: `(job, fn, args)` messages in, `(job, succeeded, value or error)` out; None ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    use_one_thread()
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the main process is gone
            return
        if message is None:
            return
        job, fn, args = message
        try:
            conn.send((job, True, fn(*args)))
        except Exception as error:
            conn.send((job, False, error))
