"""The offline demo: the bundled tiny model scored before and after a short GRPO run.

    mlx-grpo demo               # 6.3-11.5 min on 2-core AMD EPYC VMs; writes runs/demo
    mlx-grpo demo --quick       # a smoke run of a few seconds (a few steps, a few tasks)

1. Baseline: greedy accuracy and format rate of the bundled model (package data,
   mlx_grpo/weights/countdown-tiny; a checkout's weights/ links to it) on held-out generated tasks
   (generator seed EVAL_SEED, which neither the recipe nor the run trains on) and on the first rows
   of ../shared/data/countdown_real_sample.jsonl when that file exists beside the checkout. On a CPU
   with a spare core a second process scores it while step 2 runs (`mlx_grpo.scorer`).
2. `mlx-grpo train --model weights/countdown-tiny`: the settings are the preset that ships in the
   model folder (`mlx_grpo.yaml`), so the demo trains exactly as that command does.
3. The same evaluation with the trained adapters (shared by both processes, when there are two); a
   before/after table, and `demo.json` (both evaluations) next to the run's metrics and its
   reward/accuracy plot.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mlx_grpo import scorer
from mlx_grpo.countdown import notation
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.errors import UserError

# Package data, so an installed mlx-grpo finds it too; a checkout's weights/ links to the same folder.
BUNDLED_MODEL = Path(__file__).resolve().parent / "weights" / "countdown-tiny"
# Beside a source checkout only (../shared/data); elsewhere the demo skips the real rows.
REAL_ROWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "countdown_real_sample.jsonl"
EVAL_SEED = 777_777  # generator seed of the held-out tasks; the recipe skips every one of them
EVAL_TASKS = 1000
REAL_TASKS = 2000  # all rows of the sample file
MAX_TOKENS = 160  # the bundled model's searches: two rejected candidates of four numbers are ~140 tokens
# --quick: a few steps on a few tasks, to check the whole path end to end (tests, CI).
QUICK = dict(
    eval_tasks=16,
    real_tasks=16,
    train={
        "max_steps": 2,
        "batch_size": 2,
        "num_generations": 2,
        "eval_every": 0,
        "eval_samples": 4,
        "num_samples": 64,
    },
)


@dataclass
class DemoOptions:
    model: str = str(BUNDLED_MODEL)
    output_dir: str = "runs/demo"
    seed: int = 0
    max_steps: int | None = None  # None: the preset's
    eval_tasks: int = EVAL_TASKS
    real_tasks: int = REAL_TASKS
    real_rows: str = str(REAL_ROWS)
    overwrite: bool = False
    quick: bool = False
    progress: bool = True


def held_out_tasks(seed: int = EVAL_SEED, n: int = EVAL_TASKS) -> list[Task]:
    """The demo's generated evaluation tasks (the recipe excludes these from its training data)."""
    return generate_tasks(n, seed)


def eval_sets(options: DemoOptions) -> dict[str, list[Task]]:
    """Name -> tasks: the generated held-out tasks, and the first real rows when the file exists."""
    from mlx_grpo.countdown.data import read_tasks

    eval_tasks, real_tasks = (
        (QUICK["eval_tasks"], QUICK["real_tasks"]) if options.quick else (options.eval_tasks, options.real_tasks)
    )
    sets = {f"generated, seed {EVAL_SEED}": held_out_tasks(EVAL_SEED, eval_tasks)}
    if real_tasks and Path(options.real_rows).is_file():
        sets[f"real rows, {Path(options.real_rows).name}"] = read_tasks(options.real_rows)[:real_tasks]
    return sets


def train_config(options: DemoOptions):
    """The TrainConfig `mlx-grpo train --model MODEL --output-dir DIR --seed S` would build."""
    from mlx_grpo.config import build_config
    from mlx_grpo.presets import preset_for_model

    overrides = {
        "model": options.model,
        "output_dir": options.output_dir,
        "seed": options.seed,
        "max_steps": options.max_steps,
    }
    if options.quick:
        overrides.update(QUICK["train"])
    return build_config(None, overrides, base=preset_for_model(options.model))


def check_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder; choose another --output-dir")
    from mlx_grpo.rundir import LOCK

    if path.is_dir() and any(p.name != LOCK for p in path.iterdir()) and not overwrite:
        raise UserError(f"{path} already holds a demo run; pass --overwrite to replace it, or --output-dir to keep it")


def run_demo(options: DemoOptions, echo=print) -> dict:
    """Baseline eval -> GRPO training with the model's preset -> eval again; returns demo.json's dict.

    With a spare core (`scorer.spare_core`) a second process scores the baseline while GRPO trains,
    then takes every other batch of the final scoring; the figures are those of one process.
    """
    from mlx_grpo.trainer import train

    model_dir = Path(options.model)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"no model in {model_dir} (the bundled model is built by scripts/build_tiny_model.py)")
    run_dir = Path(options.output_dir)
    check_output_dir(run_dir, options.overwrite)
    config = train_config(options)
    (run_dir / "demo.json").unlink(missing_ok=True)  # a replaced run's (--overwrite)
    start = time.time()
    sets = eval_sets(options)
    todo = scorer.batches(sets)
    base = scorer.Scoring(options.model, None, config.max_completion_length, config.enable_thinking, config.prefill)
    trained = replace(base, adapter_path=str(run_dir))
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(scorer.Worker()) if scorer.spare_core() else None
        where = " (a second process, beside the training)" if worker else ""
        echo(f"[1/3] baseline: {options.model} on " + ", ".join(f"{len(t)} {n}" for n, t in sets.items()) + where)
        if worker:
            baseline = worker.submit(scorer.score_batches, base, sets, todo)
        else:
            scored_before = scorer.score_batches(base, sets, todo, options.progress)
        echo(
            f"[2/3] GRPO: {config.max_steps} steps x {config.batch_size} prompts x {config.num_generations} "
            f"completions, LoRA rank {config.lora_rank}, lr {config.learning_rate:g} ({config.lr_schedule}) -> {run_dir}"
        )
        summary = train(config, overwrite=options.overwrite, progress=options.progress)
        echo("[3/3] after training" + (" (both processes)" if worker else ""))
        if worker:
            theirs = worker.submit(scorer.score_batches, trained, sets, todo[1::2])
            scored_after = scorer.score_batches(trained, sets, todo[0::2], options.progress)
            scored_after |= theirs.get()
            scored_before = baseline.get()
        else:
            scored_after = scorer.score_batches(trained, sets, todo, options.progress)
    result = {
        "model": options.model,
        "seed": options.seed,
        "steps": summary.get("step"),
        "wall_s": round(time.time() - start, 1),
        "before": scorer.summarize(sets, scored_before),
        "after": scorer.summarize(sets, scored_after),
        "plot": str(run_dir / "plots" / "reward_accuracy.png"),
    }
    (run_dir / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_results(result: dict) -> str:
    """The before/after figures the demo prints, one block per held-out set: greedy accuracy, format
    rate, the share of answers that are an equation over the numbers (right or wrong; the rest is
    mostly a bare number), accuracy among those (skill, not habit), mean completion length and the
    self-check rate; then the trained model's first completion that rejects its own candidate and
    then solves the task, when there is one."""
    lines = []
    for name, before in result["before"].items():
        after = result["after"][name]
        gain = f"{100 * (after['accuracy'] - before['accuracy']):+.1f} points"
        if before["accuracy"]:
            gain += f", {after['accuracy'] / before['accuracy']:.1f}x"
        figures = [f"  {label:<24}{_figure(before, key)} -> {_figure(after, key)}" for label, key in FIGURES]
        figures[0] += f" ({gain})"  # the accuracy line
        lines += [f"{name} [{before['num_tasks']}]", *figures]
        corrected = after.get("first_self_correction")
        if corrected:
            text, readable = corrected["completion"], notation.readable(corrected["completion"])
            quoted = "\n".join("    " + line for line in text.splitlines())
            lines.append(
                f"  first self-correction (target {corrected['target']}, numbers {corrected['nums']}):\n{quoted}"
            )
            if readable != text:
                lines.append("  read the usual way:\n" + "\n".join("    " + line for line in readable.splitlines()))
    lines.append(f"plot: {result['plot']}   time: {result['wall_s'] / 60:.1f} min")
    return "\n".join(lines)


# (label, key) of each figure format_results prints; "skill" is accuracy / equation rate.
FIGURES = (
    ("accuracy", "accuracy"),
    ("format rate", "format_rate"),
    ("equation answers", "equation_rate"),
    ("right among equations", "skill"),
    ("completion length", "completion_length"),
    ("self-check rate", "self_check_rate"),
)


def _figure(scores: dict, key: str) -> str:
    if key == "skill":
        return f"{scores['accuracy'] / scores['equation_rate']:.3f}" if scores["equation_rate"] else "-"
    if key == "completion_length":
        return f"{scores[key]:.1f}"
    return f"{scores[key]:.3f}" if key in scores else "-"
