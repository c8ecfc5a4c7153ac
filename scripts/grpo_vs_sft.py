"""GRPO against continued supervised training from the bundled model, at equal training time.

    python scripts/grpo_vs_sft.py run --seed 0 --arm grpo --budget-s 400 &    # one arm -> JSON
    python scripts/grpo_vs_sft.py run --seed 0 --arm sft --budget-s 400 &     # side by side
    python scripts/grpo_vs_sft.py summarize                                   # table + PNG

Both arms start from `--model` (default `weights/countdown-tiny`) and stop after `--budget-s`
seconds of training time; run a seed's two arms at once (one BLAS thread each) so that they share
the machine's load.

- grpo: the demo's run (the model folder's `mlx_grpo.yaml` preset, LoRA, its learning-rate schedule
  over the preset's steps), to its last step or the budget, whichever comes first (a budget longer
  than the demo gives the supervised arm more time, not GRPO); training time is the sum of its
  steps' `time/step` (sampling, scoring, update).
- sft: the recipe's supervised training, continued: full weights, the recipe's learning rate and
  batch, on fresh generated tasks with the recipe's completions (`--sft-mix recipe`:
  `build_tiny_model.TraceMix()`, section 5's model's data; `latent-stage`: the last stage of
  `aha_recipe.py`, which made the bundled model, continued; `latent`: its mix trained whole; `sum`:
  the mix of its execution stages); training time is the wall time of its steps.

Every `--eval-every-s` seconds of training time each arm scores greedy accuracy, completion length
and self-check rate on `--eval-tasks` of the demo's held-out tasks (off the clock); at the end it
scores the demo's two held-out sets in full (1,000 generated tasks, 2,000 real rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import aha_recipe  # noqa: E402
import build_tiny_model as recipe  # noqa: E402
import supervised  # noqa: E402

from mlx_grpo.demo import BUNDLED_MODEL, EVAL_SEED, DemoOptions, eval_sets, held_out_tasks, train_config  # noqa: E402

RESULTS = REPO / "scripts" / "results" / "grpo_vs_sft"
# --sft-mix: the completions the supervised arm trains on, and whether on their openings only with a
# share of rehearsed sum tries (`build_tiny_model.training_batches`): "latent-stage" is the bundled
# model's own last stage, continued
SFT_MIXES = {
    "recipe": (recipe.TraceMix(), False, 0.0),
    "latent": (aha_recipe.LATENT_MIX, False, 0.0),
    "latent-stage": (aha_recipe.LATENT_MIX, True, 0.5),
    "sum": (aha_recipe.SUM_MIX, False, 0.0),
}
FIGURES = ("accuracy", "completion_length", "self_check_rate", "equation_rate")


class _BudgetSpent(Exception):
    pass


def scores(model, tokenizer, tasks, config) -> dict:
    from mlx_grpo.evaluate import evaluate_as_trained

    result = evaluate_as_trained(model, tokenizer, tasks, config, batch_size=64)
    return {k: result[k] for k in FIGURES}


class Curve:
    """Evaluations every `every_s` seconds of training time, written to `path` as they come."""

    def __init__(self, arm: str, seed: int, budget_s: float, every_s: float, tasks, path: Path):
        self.arm, self.seed, self.budget_s, self.every_s, self.tasks, self.path = (
            arm,
            seed,
            budget_s,
            every_s,
            tasks,
            path,
        )
        self.points: list[dict] = []

    def add(self, step: int, train_s: float, model, tokenizer, config) -> bool:
        """Evaluate when due; True when the budget is spent."""
        spent = train_s >= self.budget_s
        if spent or not self.points or train_s >= self.every_s * len(self.points):
            point = {"step": step, "train_s": round(train_s, 1)} | scores(model, tokenizer, self.tasks, config)
            self.points.append(point)
            print(json.dumps(point), flush=True)
            self.save()
        return spent

    def save(self, **extra) -> None:
        result = {"arm": self.arm, "seed": self.seed, "budget_s": self.budget_s, "points": self.points, **extra}
        self.path.write_text(json.dumps(result, indent=1) + "\n")


def run_grpo(curve: Curve, config) -> tuple:
    from mlx_grpo.trainer import prepare, run

    training = prepare(config)
    train_s = 0.0
    curve.add(0, 0.0, training.model, training.tokenizer, training.config)

    def on_step(metrics: dict) -> None:
        nonlocal train_s
        train_s += metrics["time/step"]
        if curve.add(metrics["step"], train_s, training.model, training.tokenizer, training.config):
            raise _BudgetSpent

    try:
        run(training, on_step=on_step, progress=False)
    except _BudgetSpent:
        pass
    return training.model, training.tokenizer


def run_sft(curve: Curve, config, seed: int, lr: float, batch_size: int, sft_mix: str) -> tuple:
    import mlx.core as mx
    import mlx.optimizers as optim
    import mlx_lm

    model, tokenizer = mlx_lm.load(config.model)
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # fresh tasks: a seed stream of its own, never the demo's held-out tasks
    mix, opening_only, rehearse = SFT_MIXES[sft_mix]
    exclude = set(held_out_tasks(EVAL_SEED))
    batches = recipe.training_batches(batch_size, 10_000 + seed, exclude, mix, opening_only, rehearse)
    optimizer = optim.AdamW(learning_rate=lr, weight_decay=0.0)
    step_on = supervised.sft_step(model, optimizer)
    mx.random.seed(seed)
    curve.add(0, 0.0, model, tokenizer, config)
    step, train_s = 0, 0.0
    while True:
        start = time.perf_counter()
        pairs, windows = next(batches)
        ids, mask = recipe.make_batch(tokenizer, pairs, stop_id, pad_id, windows=windows)
        step_on(ids, mask)
        step, train_s = step + 1, train_s + time.perf_counter() - start
        if curve.add(step, train_s, model, tokenizer, config):
            return model, tokenizer


def run_arm(args) -> None:
    with tempfile.TemporaryDirectory() as out:
        options = DemoOptions(model=args.model, output_dir=out, seed=args.seed)  # the preset's steps
        config = train_config(options).replace(eval_every=0, save_every=10**6, log_completions_every=10**6)
        tasks = held_out_tasks(n=args.eval_tasks)
        label = args.arm
        if args.arm == "sft" and args.sft_mix != "recipe":
            label += f" {args.sft_mix}"
        if args.arm == "sft" and args.lr != recipe.DEFAULT_LR:
            label += f" lr {args.lr:g}"
        path = args.results / f"seed{args.seed}-{label.replace(' ', '-')}.json"
        curve = Curve(label, args.seed, args.budget_s, args.eval_every_s, tasks, path)
        if args.arm == "grpo":
            model, tokenizer = run_grpo(curve, config)
        else:
            model, tokenizer = run_sft(curve, config, args.seed, args.lr, args.batch_size, args.sft_mix)
        final_sets = eval_sets(DemoOptions(quick=args.quick))
        final = {name: scores(model, tokenizer, t, config) for name, t in final_sets.items()}
        sft = {"lr": args.lr, "batch_size": args.batch_size, "mix": args.sft_mix} if args.arm == "sft" else None
        curve.save(final=final, model=args.model, sft=sft)
        print(json.dumps(final), flush=True)


def summarize(results: Path) -> str:
    runs = {(r["seed"], r["arm"]): r for r in map(json.loads, map(Path.read_text, sorted(results.glob("*.json"))))}
    sets = sorted({name for r in runs.values() for name in r.get("final", {})})
    lines = [
        "| seed | arm | training s (steps) | start -> end on the curve's tasks | "
        + " | ".join(f"final, {name}: acc / length / self-check" for name in sets)
        + " |",
        "|---|---|---|---|" + "---|" * len(sets),
    ]
    for (seed, arm), r in sorted(runs.items()):
        first, last = r["points"][0], r["points"][-1]
        finals = [r.get("final", {}).get(name) for name in sets]
        cells = [
            f"{f['accuracy']:.3f} / {f['completion_length']:.1f} / {f['self_check_rate']:.3f}" if f else "-"
            for f in finals
        ]
        lines.append(
            f"| {seed} | {arm} | {last['train_s']:.0f} ({last['step']}) | "
            f"{first['accuracy']:.3f} -> {last['accuracy']:.3f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "GRPO minus SFT, final held-out accuracy (points):", ""]
    for (seed, arm), run in sorted(runs.items()):
        grpo, sft = runs.get((seed, "grpo"), {}).get("final"), run.get("final")
        if arm != "grpo" and grpo and sft:
            gaps = ", ".join(f"{name} {100 * (grpo[name]['accuracy'] - sft[name]['accuracy']):+.1f}" for name in sets)
            lines.append(f"- seed {seed}, against {arm}: {gaps}")
    return "\n".join(lines) + "\n"


def plot(results: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(f.read_text()) for f in sorted(results.glob("*.json"))]
    fig, axes = plt.subplots(1, len(FIGURES), figsize=(18, 4))
    # a colour per arm (GRPO orange, each supervised variant its own), a line style per seed
    sft_arms = sorted({r["arm"] for r in runs} - {"grpo"})
    colours = {"grpo": "tab:orange"} | dict(zip(sft_arms, ["tab:blue", "tab:cyan", "tab:green", "tab:purple"]))
    for r in runs:
        style, seconds = ["-", "--", ":"][r["seed"] % 3], [p["train_s"] for p in r["points"]]
        for ax, key in zip(axes, FIGURES):
            label = f"{r['arm']} seed {r['seed']}"
            ax.plot(seconds, [p[key] for p in r["points"]], style, color=colours.get(r["arm"]), marker="o", label=label)
    for ax, key in zip(axes, FIGURES):
        ax.set(xlabel="training time (s, evaluation excluded)", ylabel=key.replace("_", " "))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--arm", choices=("grpo", "sft"), required=True)
    one.add_argument("--budget-s", type=float, default=400)
    one.add_argument("--eval-every-s", type=float, default=60)
    one.add_argument("--eval-tasks", type=int, default=300)
    one.add_argument("--quick", action="store_true", help="final scores on 16 tasks a set (a smoke run)")
    one.add_argument("--lr", type=float, default=recipe.DEFAULT_LR, help="sft: the recipe's learning rate")
    one.add_argument("--batch-size", type=int, default=recipe.DEFAULT_BATCH, help="sft: the recipe's batch")
    one.add_argument("--sft-mix", choices=SFT_MIXES, default="recipe", help="sft: the completions it trains on")
    one.add_argument("--model", default=str(BUNDLED_MODEL), help="the checkpoint both arms start from")
    summary = sub.add_parser("summarize")
    for command in (one, summary):
        command.add_argument("--results", type=Path, default=RESULTS, help="folder of the runs' JSON files")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        run_arm(args)
    else:
        table = summarize(args.results)
        (args.results / "summary.md").write_text(table)
        plot(args.results, args.results / "curves.png")
        print(table)


if __name__ == "__main__":
    from mlx_grpo.blas import maybe_reexec_with_openblas

    maybe_reexec_with_openblas()  # as the CLI does: OpenBLAS on a Linux CPU, the speed the figures were measured at
    main()
