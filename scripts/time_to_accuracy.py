"""Held-out accuracy against training time and generated tokens, with and without dynamic sampling.

    python scripts/time_to_accuracy.py run --seed 0 --mode plain --budget-s 480   # one run -> JSON
    python scripts/time_to_accuracy.py summarize                                   # table + PNG

Each run trains the bundled model with the demo's settings (weights/countdown-tiny/mlx_grpo.yaml)
for `--budget-s` seconds of training time (the sum of the steps' `time/step`: sampling, scoring and
update, not evaluation) or `--max-steps`, whichever ends first. Every `--eval-every-s` seconds of
training time it scores greedy accuracy on the demo's held-out generated tasks, off the clock.
`summarize` reads every run's JSON, takes each seed's plain run's final accuracy as the target, and
reports when the dynamic run first reached it (time and tokens) and where each run's time went.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlx_grpo.demo import DemoOptions, held_out_tasks, train_config  # noqa: E402

RESULTS = REPO / "scripts" / "results" / "dynamic_sampling"
PHASES = ("generate", "score", "update")
PLATEAU = 5  # a single evaluation of 300 tasks moves by +-2.3 points: the plateau averages the last few


class _BudgetSpent(Exception):
    pass


def run_one(seed: int, mode: str, budget_s: float, eval_every_s: float, eval_tasks: int, max_steps: int, path: Path):
    """Train one run until the budget is spent; write its curve and time breakdown to `path` at each
    evaluation (a run stopped early still leaves its curve so far)."""
    from mlx_grpo.evaluate import evaluate_as_trained
    from mlx_grpo.trainer import prepare, run

    tasks = held_out_tasks(n=eval_tasks)
    with tempfile.TemporaryDirectory() as out:
        config = train_config(DemoOptions(output_dir=out, seed=seed, max_steps=max_steps)).replace(
            dynamic_sampling=mode == "dynamic", eval_every=0, save_every=10**6, log_completions_every=10**6
        )
        training = prepare(config)

        def accuracy() -> float:
            return evaluate_as_trained(training.model, training.tokenizer, tasks, training.config, batch_size=64)[
                "accuracy"
            ]

        totals = {"train_s": 0.0, "generated_tokens": 0, **{p: 0.0 for p in PHASES}}
        points = [{"step": 0, "train_s": 0.0, "generated_tokens": 0, "accuracy": accuracy()}]
        steps = []

        def on_step(metrics: dict) -> None:
            totals["train_s"] += metrics["time/step"]
            totals["generated_tokens"] += metrics["generated_tokens"]
            for p in PHASES:
                totals[p] += metrics[f"time/{p}"]
            steps.append({k: v for k, v in metrics.items() if k.startswith(("time/", "sampling/", "zero_adv"))})
            spent = totals["train_s"] >= budget_s or metrics["step"] == max_steps
            if spent or totals["train_s"] >= eval_every_s * len(points):
                point = {"step": metrics["step"], "train_s": totals["train_s"]}
                points.append({**point, "generated_tokens": totals["generated_tokens"], "accuracy": accuracy()})
                print(json.dumps(points[-1]), flush=True)
                result = {"seed": seed, "mode": mode, "totals": totals, "points": points, "steps": steps}
                path.write_text(json.dumps(result, indent=1) + "\n")
            if spent:
                raise _BudgetSpent

        try:
            run(training, on_step=on_step, progress=False)
        except _BudgetSpent:
            pass


def time_to(points: list[dict], target: float, key: str) -> float | None:
    """`key` ("train_s" or "generated_tokens") at the first evaluation reaching `target`; None if none."""
    return next((p[key] for p in points if p["accuracy"] >= target), None)


def summarize(results: Path) -> str:
    runs = {(r["seed"], r["mode"]): r for r in map(json.loads, map(Path.read_text, sorted(results.glob("*.json"))))}
    head = (
        "| seed | plain: final acc (train s, steps, M tokens) | dynamic: final acc (train s, steps, M tokens) "
        "| dynamic reaches plain's final: train s (x plain), tokens (x plain) "
        f"| ... plain's plateau (mean of its last {PLATEAU} evaluations) | ... plain's best "
        "| plain itself reaches its plateau |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for seed in sorted({s for s, _ in runs}):
        plain, dyn = runs.get((seed, "plain")), runs.get((seed, "dynamic"))
        if plain and dyn:
            accuracies = [p["accuracy"] for p in plain["points"]]
            plateau = sum(accuracies[-PLATEAU:]) / len(accuracies[-PLATEAU:])
            targets = (accuracies[-1], plateau, max(accuracies))
            cells = [_reached(dyn, plain, target) for target in targets] + [_reached(plain, plain, plateau)]
            lines.append(f"| {seed} | {_final(plain)} | {_final(dyn)} | {' | '.join(cells)} |")
    lines += ["", "Where the training time went (seconds, summed over steps):", ""]
    lines += [
        "| seed | mode | steps | generate | score | update | s/step | generated tokens/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (seed, mode), r in sorted(runs.items()):
        t, k = r["totals"], len(r["steps"])
        lines.append(
            f"| {seed} | {mode} | {k} | {t['generate']:.0f} | {t['score']:.1f} | {t['update']:.0f} | "
            f"{t['train_s'] / k:.1f} | {t['generated_tokens'] / k:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _reached(dyn: dict, plain: dict, target: float) -> str:
    """When run `dyn` first reached `target`, against the plain run's whole time and tokens."""
    t, n = time_to(dyn["points"], target, "train_s"), time_to(dyn["points"], target, "generated_tokens")
    if t is None:
        return f"{target:.3f}: not reached"
    end = plain["points"][-1]
    return f"{target:.3f}: {t:.0f} s ({t / end['train_s']:.2f}x), {n / 1e6:.3f} M ({n / end['generated_tokens']:.2f}x)"


def _final(run: dict) -> str:
    last = run["points"][-1]
    return f"{last['accuracy']:.3f} ({last['train_s']:.0f} s, {last['step']}, {last['generated_tokens'] / 1e6:.2f})"


def plot(results: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"plain": "tab:blue", "dynamic": "tab:orange"}
    for f in sorted(results.glob("*.json")):
        r = json.loads(f.read_text())
        pts, style = r["points"], ["-", "--", ":"][r["seed"] % 3]
        label = f"{r['mode']} seed {r['seed']}"
        acc = [p["accuracy"] for p in pts]
        by_time.plot([p["train_s"] for p in pts], acc, style, color=colours[r["mode"]], marker="o", label=label)
        by_tokens.plot([p["generated_tokens"] / 1e6 for p in pts], acc, style, color=colours[r["mode"]], marker="o")
    by_time.set(xlabel="training time (s, evaluation excluded)", ylabel="held-out greedy accuracy")
    by_tokens.set(xlabel="generated tokens (M)")
    by_time.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--mode", choices=("plain", "dynamic"), required=True)
    one.add_argument("--budget-s", type=float, default=480)
    one.add_argument("--eval-every-s", type=float, default=120)
    one.add_argument("--eval-tasks", type=int, default=300)
    one.add_argument("--max-steps", type=int, default=150)
    sub.add_parser("summarize")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        path = RESULTS / f"seed{args.seed}-{args.mode}.json"
        run_one(args.seed, args.mode, args.budget_s, args.eval_every_s, args.eval_tasks, args.max_steps, path)
    else:
        table = summarize(RESULTS)
        (RESULTS / "summary.md").write_text(table)
        plot(RESULTS, RESULTS / "curves.png")
        print(table)


if __name__ == "__main__":
    from mlx_grpo.blas import maybe_reexec_with_openblas

    maybe_reexec_with_openblas()  # as the CLI does: OpenBLAS on a Linux CPU, the speed the figures were measured at
    main()
