"""Scoring split over two processes gives exactly `evaluate`'s figures in one; the worker process
returns values and errors in any order of waiting and fails the wait when it dies."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mlx_grpo import scorer
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.demo import BUNDLED_MODEL
from mlx_grpo.errors import UserError
from mlx_grpo.evaluate import COUNTS

needs_bundled_model = pytest.mark.skipif(
    not (BUNDLED_MODEL / "model.safetensors").is_file(), reason="bundled model not built (scripts/build_tiny_model.py)"
)
MAX_TOKENS = 160


@pytest.fixture(scope="module")
def sets():
    # one set of a full batch and a partial one, one smaller than a batch
    return {"first": generate_tasks(scorer.BATCH + 9, seed=5), "second": generate_tasks(11, seed=6)}


@needs_bundled_model
@pytest.mark.slow  # a spawned process (~5 s) and ~150 greedy completions twice
def test_two_processes_score_exactly_as_evaluate_does_in_one(sets):
    from mlx_grpo.evaluate import evaluate
    from mlx_grpo.model import load_model

    scoring = scorer.Scoring(str(BUNDLED_MODEL), None, MAX_TOKENS, enable_thinking=False, prefill="")
    todo = scorer.batches(sets)
    assert todo == [("first", 0), ("first", scorer.BATCH), ("second", 0)]
    with scorer.Worker() as worker:
        theirs = worker.submit(scorer.score_batches, scoring, sets, todo[1::2])
        scored = scorer.score_batches(scoring, sets, todo[0::2])
        scored |= theirs.get()
    split = scorer.summarize(sets, scored)

    model, tokenizer = load_model(str(BUNDLED_MODEL))
    for name, tasks in sets.items():
        samples = []
        whole = evaluate(
            model,
            tokenizer,
            tasks,
            max_tokens=MAX_TOKENS,
            batch_size=scorer.BATCH,
            enable_thinking=False,
            samples=samples,
        )
        first = next((s for s in samples if s["correct"] and s["self_check"]), None)
        assert split[name] == {**whole, "first_self_correction": first}
    assert split["first"]["completion_length"] > 0 and split["first"]["num_tasks"] == scorer.BATCH + 9


def test_summarize_refuses_a_set_with_a_batch_missing(sets):
    counts = dict.fromkeys(COUNTS, 1)
    scored = {("first", 0): (counts, []), ("second", 0): (counts, [])}  # ("first", 64) never scored
    with pytest.raises(ValueError, match="do not cover"):
        scorer.summarize(sets, scored)
    scored[("first", scorer.BATCH)] = (counts, [])
    result = scorer.summarize(sets, scored)
    assert result["first"]["accuracy"] == 2 / (scorer.BATCH + 9) and result["second"]["accuracy"] == 1 / 11


def test_worker_returns_values_in_any_order_of_waiting_and_raises_its_errors():
    with scorer.Worker() as worker:
        first, second, failing = worker.submit(pow, 2, 3), worker.submit(pow, 3, 2), worker.submit(int, "x")
        assert second.get() == 9 and first.get() == 8
        with pytest.raises(ValueError, match="invalid literal"):
            failing.get()
        assert worker.submit(divmod, 7, 2).get() == (3, 1)  # still serving after an error
    assert not os.path.exists(f"/proc/{worker.pid}")  # it returned and was reaped


def test_a_worker_that_dies_fails_the_wait_instead_of_hanging():
    start = time.monotonic()
    with pytest.raises(UserError, match="exit code -9"):
        with scorer.Worker() as worker:
            pending = worker.submit(time.sleep, 120)
            os.kill(worker.pid, signal.SIGKILL)
            pending.get()
    assert time.monotonic() - start < 60
