"""The bundled model's recipe (scripts/build_tiny_model.py): warm-start data and reproducibility."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import build_tiny_model as recipe  # noqa: E402

from mlx_grpo.countdown import notation, selfcheck  # noqa: E402
from mlx_grpo.countdown.generator import generate_tasks  # noqa: E402
from mlx_grpo.countdown.scoring import judge  # noqa: E402
from mlx_grpo.countdown.solver import worked_solution  # noqa: E402
from mlx_grpo.countdown.traces import sum_trace, sum_try_fixes  # noqa: E402
from mlx_grpo.rewards import equation_reward_func, format_reward_func  # noqa: E402

pytestmark = pytest.mark.slow  # the recipe's training runs

TASKS = generate_tasks(2000, seed=4242)


def test_warm_start_completions_answer_with_the_equation_or_the_bare_result():
    rng = random.Random(0)
    completions = [recipe.warm_start_completion(task, rng) for task in TASKS]
    assert format_reward_func(completions) == [1.0] * len(TASKS)  # both kinds are well formed
    solved = equation_reward_func(completions, [t.target for t in TASKS], [list(t.nums) for t in TASKS])
    bare = 0
    for task, completion, reward in zip(TASKS, completions, solved):
        worked = worked_solution(task.nums, task.target)
        think = worked[: worked.index("<answer>")]
        assert completion.startswith(think)  # the reasoning is always the solver's
        if reward == 1.0:
            assert completion == worked
        else:
            bare += 1
            assert completion == f"{think}<answer> {task.target} </answer>"
    assert abs(bare / len(TASKS) - recipe.BARE_ANSWER) < 0.04  # 4 standard errors at n = 2000


def test_a_search_mix_writes_its_share_of_self_checking_traces_all_correct():
    rng = random.Random(0)
    mix = recipe.TraceMix(bare=0.0, search=0.1, max_misses=2)
    completions = [recipe.warm_start_completion(task, rng, mix) for task in TASKS]
    solved = equation_reward_func(completions, [t.target for t in TASKS], [list(t.nums) for t in TASKS])
    assert solved == [1.0] * len(TASKS) and format_reward_func(completions) == [1.0] * len(TASKS)
    checks = [selfcheck.self_checks(c, t.target) for c, t in zip(completions, TASKS)]
    assert set(checks) == {0, 1, 2}
    assert abs(sum(n > 0 for n in checks) / len(TASKS) - mix.search) < 0.03  # 4 standard errors at n = 2000


def test_a_latent_search_mix_in_reversed_digits_writes_its_shares_of_each_kind():
    rng = random.Random(0)
    mix = recipe.TraceMix(bare=0.0, search=0.15, give_up=0.35, max_misses=2, reversed_digits=True)
    pairs = [(t, recipe.warm_start_completion(t, rng, mix)) for t in TASKS]
    pairs = [(t, c) for t, c in pairs if c is not None]
    assert len(pairs) > 0.95 * len(TASKS)  # only thoughts with a number above 999 are left out (~2.6%)
    assert all(notation.is_reversed(selfcheck.thought(c)) for _, c in pairs)
    assert all(step.correct for _, c in pairs for step in selfcheck.steps(c))  # every line true, read backwards
    tasks, completions = [t for t, _ in pairs], [c for _, c in pairs]
    solved = equation_reward_func(completions, [t.target for t in tasks], [list(t.nums) for t in tasks])
    assert format_reward_func(completions) == [1.0] * len(pairs)
    checks = [selfcheck.self_checks(c, t.target) for t, c in pairs]
    searched = sum(n > 0 for n in checks) / len(pairs)
    gave_up = sum(r == 0.0 for r in solved) / len(pairs)
    assert all(r == 1.0 for r, n in zip(solved, checks) if n > 0)  # a search ends on the solution
    assert abs(searched - mix.search) < 0.035 and abs(gave_up - mix.give_up) < 0.045  # 4 standard errors


@pytest.mark.parametrize("fixable, flip_line", [(0.0, False), (0.4, False), (0.7, False), (0.7, True)])
def test_a_fixable_share_adds_sum_tries_on_tasks_the_try_fixes_and_keeps_the_excluded_tasks_out(fixable, flip_line):
    mix = recipe.TraceMix(
        bare=0.0, give_up=0.1, sum_first=0.8, near=True, reversed_digits=True, fixable=fixable, flip_line=flip_line
    )
    unfiltered = recipe.example_batches(32, 3, set(), mix)
    exclude = {t for _ in range(5) for t, _ in next(unfiltered)}  # drawn again below, and left out
    batches = recipe.example_batches(32, 3, exclude, mix)
    pairs = [pair for _ in range(60) for pair in next(batches)]
    assert not exclude & {t for t, _ in pairs} and len(pairs) > 0.9 * 60 * 32
    assert all(judge(c, t.target, t.nums).well_formed for t, c in pairs)
    fixed = [c for t, c in pairs if sum_try_fixes(t) and c == sum_trace(t, reversed_digits=True, flip_line=flip_line)]
    natural = 0.8 * 0.37  # the mix's sum share x the tasks the try fixes (traces.sum_trace's docstring)
    expected = fixable + (1 - fixable) * natural
    assert abs(len(fixed) / len(pairs) - expected) < 0.05  # ~4 standard errors
    assert all(selfcheck.self_checks(c, t.target) == 1 for t, c in pairs if c in fixed)


def test_loss_weights_fall_on_step_results_and_the_answer_and_the_ids_are_the_whole_encoding():
    import mlx_lm

    from mlx_grpo.countdown.prompts import build_prompt
    from mlx_grpo.demo import BUNDLED_MODEL

    _, tokenizer = mlx_lm.load(str(BUNDLED_MODEL))
    rng = random.Random(0)
    mix = recipe.TraceMix(bare=0.0, search=0.4, give_up=0.2, sum_first=0.3, max_misses=2, reversed_digits=True)
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for task in TASKS[:200]:
        completion = recipe.warm_start_completion(task, rng, mix)
        if completion is None:
            continue
        ids, weights = recipe.encode_example(tokenizer, task, completion, stop_id, result_weight=7.0, answer_weight=3.0)
        prompt = tokenizer.encode(build_prompt(tokenizer, task).text, add_special_tokens=False)
        assert ids == prompt + tokenizer.encode(completion, add_special_tokens=False) + [stop_id]
        assert weights[: len(prompt)] == [0.0] * len(prompt) and set(weights[len(prompt) :]) == {1.0, 3.0, 7.0}
        results = [notation.write(step.result) for step in selfcheck.steps(completion)]  # rejections excluded
        assert tokenizer.decode([i for i, w in zip(ids, weights) if w == 7.0]) == "".join(results)
        answer = completion[completion.index("<answer> ") + 9 : completion.index(" </answer>")]
        weighted = tokenizer.decode([i for i, w in zip(ids, weights) if w == 3.0])  # with tokens merged into its edges
        assert answer in weighted and weighted in completion[completion.index("</think>") + 8 :]


def test_opening_only_weighs_the_thought_up_to_where_it_stops_adding_every_number():
    import mlx_lm

    from mlx_grpo.countdown.prompts import build_prompt
    from mlx_grpo.demo import BUNDLED_MODEL

    _, tokenizer = mlx_lm.load(str(BUNDLED_MODEL))
    rng = random.Random(0)
    mix = recipe.TraceMix(bare=0.0, give_up=0.35, sum_first=0.15, near=True, reversed_digits=True)
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    kinds = set()
    for task in TASKS[:300]:
        completion = recipe.warm_start_completion(task, rng, mix)
        if completion is None:
            continue
        end = recipe.opening_end(task, completion, mix)
        opening = completion[:end].splitlines()
        summing = recipe.mix_sum_trace(task, mix).splitlines()
        # every line but the last is the sum try's adding up; the last is its check or a departure
        assert opening[:-1] == summing[: len(opening) - 1] and "!=" not in "".join(opening[:-1])
        if end == len(completion):  # the numbers add up to the target: nothing to check
            assert opening == summing and "!=" not in completion
        elif opening[-1] == summing[len(opening) - 1]:
            assert "!=" in opening[-1] and completion == recipe.mix_sum_trace(task, mix)
            kinds.add("sum try")
        else:
            kinds.add("other")
        ids, weights = recipe.encode_example(tokenizer, task, completion, stop_id, 5.0, 3.0, window=(0, end))
        prompt = tokenizer.encode(build_prompt(tokenizer, task).text, add_special_tokens=False)
        assert weights[-1] == 0.0 and weights[: len(prompt)] == [0.0] * len(prompt)
        weighted = [i for i, w in zip(ids, weights) if w > 0]  # a token across the edge takes its weight
        assert completion.startswith(tokenizer.decode(weighted)) and tokenizer.decode(weighted).startswith(
            completion[:end]
        )
        assert len(tokenizer.decode(weighted[:-1])) < end
    assert kinds == {"sum try", "other"}


def test_a_rehearsing_latent_batch_trains_the_mix_s_openings_and_fixable_sum_tries_after_theirs():
    import mlx_lm

    from mlx_grpo.demo import BUNDLED_MODEL

    _, tokenizer = mlx_lm.load(str(BUNDLED_MODEL))
    mix = recipe.TraceMix(bare=0.0, give_up=0.35, sum_first=0.15, near=True, reversed_digits=True)
    batches = recipe.training_batches(32, 3, set(), mix, opening_only=True, rehearse=0.25)
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for _ in range(3):
        pairs, windows = next(batches)
        latent = [(pair, w) for pair, w in zip(pairs, windows) if w[0] == 0]
        fixed = [(pair, w) for pair, w in zip(pairs, windows) if w[0] > 0]
        assert len(latent) >= 20 and all(w == (0, recipe.opening_end(t, c, mix)) for (t, c), w in latent)
        assert len(fixed) == 8 and all(sum_try_fixes(t) and c == recipe.mix_sum_trace(t, mix) for (t, c), _ in fixed)
        for (task, completion), window in fixed:
            assert window == (recipe.opening_end(task, completion, mix), None)
            ids, weights = recipe.encode_example(tokenizer, task, completion, stop_id, window=window)
            assert weights[-1] == 1.0  # the stop token: the rest of the completion runs to the end
            text = tokenizer.decode([i for i, w in zip(ids[:-1], weights[:-1]) if w > 0])
            assert completion.endswith(text) and text.endswith(completion[window[0] :][-20:])
            assert len(text) >= len(completion) - window[0]  # a token across the edge is in it
        ids, mask = recipe.make_batch(tokenizer, pairs, stop_id, 0, windows=windows)
        assert ids.shape[0] == len(pairs) and float(mask.sum()) > 0
    whole = recipe.training_batches(32, 3, set(), mix, opening_only=False, rehearse=0.25)
    assert next(whole) == (next(recipe.example_batches(32, 3, set(), mix)), None)


def test_recipe_is_reproducible_from_its_seed(tmp_path):
    def build(out: Path, seed: int) -> dict[str, str]:
        recipe.main(
            [
                "--out",
                str(out),
                "--seed",
                str(seed),
                "--sft-steps",
                "3",
                "--cooldown",
                "1",
                "--eval-tasks",
                "2",
                "--log-every",
                "3",
            ]
        )
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.iterdir())}

    first, again, other = build(tmp_path / "a", 0), build(tmp_path / "b", 0), build(tmp_path / "c", 1)
    assert first == again
    assert first["model.safetensors"] != other["model.safetensors"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(first)


def test_two_ranks_train_the_weights_one_process_trains(tmp_path):
    """The recipe data-parallel (`supervised.py`, started by `ranks.py`): each rank trains on its
    rows of the same batches, stage 0's step lines and the traces alike, and they end with one
    process's weights; the probes and the final score share their tasks (`evaluate`), and rank 0
    alone writes and prints."""
    import aha_recipe
    from ring import load

    from mlx_grpo.demo import BUNDLED_MODEL

    scripts = Path(recipe.__file__).parent
    mix, stage_args, _ = aha_recipe.recipe_stages()["execute"]
    argv = [str(scripts / "build_tiny_model.py"), *recipe.mix_arguments(mix), *stage_args]
    argv += ["--init-from", str(BUNDLED_MODEL), "--batch-size", "6", "--sft-steps", "3", "--log-every", "1"]
    argv += ["--arith-steps", "2", "--arith-batch-size", "6", "--lr", "3e-4", "--eval-tasks", "6"]
    argv += ["--probe-tasks", "4", "--max-tokens", "24"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_")}

    def train(out: Path, ranks: list[str]) -> str:
        args = [sys.executable, *ranks, *argv, "--out", str(out)]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        return done.stdout

    one, two = train(tmp_path / "one", []), train(tmp_path / "two", [str(scripts / "ranks.py"), "-n", "2"])
    logged = ('{"format"', '{"step"', '{"seed"')  # stage 0's log line, the traces', the result
    lines = [[json.loads(line) for line in out.splitlines() if line.startswith(logged)] for out in (one, two)]
    assert len(lines[0]) == len(lines[1]) == 1 + 3 + 1  # rank 1 prints nothing
    losses = [[line.get("loss", line.get("final_loss")) for line in run] for run in lines]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for got, want in zip(lines[1], lines[0]):  # the same figures, scored in other batches
        assert sorted(got) == sorted(want)
    assert lines[1][-1]["num_tasks"] == 6 and "probe/accuracy" in lines[1][1]
    start_weights = load(BUNDLED_MODEL / "model.safetensors")
    want, got = load(tmp_path / "one" / "model.safetensors"), load(tmp_path / "two" / "model.safetensors")
    assert sorted(got) == sorted(want) == sorted(start_weights)
    flat = [np.concatenate([w[n].ravel() for n in sorted(w)]) for w in (got, want, start_weights)]
    moved = np.linalg.norm(flat[1] - flat[2])
    assert moved > 0 and np.linalg.norm(flat[0] - flat[1]) < 1e-3 * moved


def test_ranks_exits_with_a_failing_rank_s_status(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys\nsys.exit(3 if os.environ['MLX_RANK'] == '1' else 0)\n")
    ranks = Path(recipe.__file__).parent / "ranks.py"
    for world, status in ((2, 3), (1, 0)):
        args = [sys.executable, str(ranks), "-n", str(world), str(script)]
        assert subprocess.run(args, capture_output=True, timeout=120).returncode == status
