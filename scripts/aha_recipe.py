"""Build the self-checking warm start of scripts/README.md section 7 from the shipped model, seeded.

    python scripts/build_tiny_model.py --out /tmp/base      # the shipped model, from nothing (~25 min)
    python scripts/aha_recipe.py --from /tmp/base --out /tmp/aha

Each stage is one `build_tiny_model.py` run that continues the last (`--init-from`) on fresh tasks
(data seed `--seed` + 1,000 x the stage's index); intermediate models go to `<out>-stages/<name>`,
the last stage to `<out>` with the GRPO preset it was measured with (`mlx_grpo.yaml`), and the wall
time of every stage to `<out>-stages/recipe.json`. The stages are the lineage that worked (E2 ...
L1), without its search-trace detours:

1. `arith`: single step lines and restatements in the reversed-digit notation (stage 0), then the
   sum-try mix with the step-line results weighted 30, where in-trace arithmetic appears as a
   phase change (G1);
2. `execute`, `execute-more`: the same mix with the results weighted 5, where the sum try's
   execution keeps improving with steps (K1 ... K4);
3. `latent`: a short, low-lr phase with the sum try at a 15% share (L1), so the behaviour is latent
   and GRPO has something to raise.

`--fixable-share F` makes F of every execution batch sum tries on tasks the try fixes (the mix's own
sum tries fix ~30% of a batch), so the retry and the flipped answer, the weak stages of every run
before, are trained ~2.7x as often per step at the default F 0.7 (0 is the recipe of Bx2). The
latent stage's lr is 1e-4: at 3e-4 it undid most of what the execution stages had learnt
(scripts/README.md section 7, runs F4 and F7).

`--fresh` starts from a new model instead of `--from`: its first stage did not learn the in-trace
arithmetic in 800 steps (scripts/README.md section 7), so it is there to measure, not to use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import build_tiny_model  # noqa: E402
import yaml  # noqa: E402

from mlx_grpo.config import read_config_file  # noqa: E402
from mlx_grpo.demo import BUNDLED_MODEL  # noqa: E402
from mlx_grpo.presets import PRESET_FILE  # noqa: E402

# The sum try at a high share (mostly the sum try, some give-ups and worked solutions), and the low
# share of the latent stage; all in the reversed-digit notation, wrong candidates near misses.
SUM_MIX = build_tiny_model.TraceMix(bare=0.0, give_up=0.1, sum_first=0.8, near=True, reversed_digits=True)
LATENT_MIX = build_tiny_model.TraceMix(bare=0.0, give_up=0.35, sum_first=0.15, near=True, reversed_digits=True)
LATENT_LR = 1e-4
# The GRPO settings the warm start was measured with (scripts/README.md section 7): a sum try runs
# to ~170 tokens, and 8 prompts a step keep the demo's 60 steps near its 10 minutes on 2 cores.
GRPO_PRESET = {
    "batch_size": 8,
    "max_completion_length": 192,
    "max_steps": 60,
    "eval_every": 30,
    "save_every": 30,
    "eval_samples": 200,
}
COMMON = ["--batch-size", "32", "--max-tokens", "192"]
FIXABLE_SHARE = 0.7


def recipe_stages(fixable: float = FIXABLE_SHARE) -> dict:
    """name -> (mix, arguments, steps): the steps of stage 0 (`--arith-steps`) and of the traces.
    `fixable`: the share of each execution batch that is sum tries on tasks the try fixes."""
    execute = (
        dataclasses.replace(SUM_MIX, fixable=fixable),
        ["--result-weight", "5", "--cooldown", "100"],
        {"--sft-steps": 1200},
    )
    latent_args = ["--result-weight", "5", "--lr", str(LATENT_LR), "--cooldown", "50"]
    return {
        "arith": (SUM_MIX, ["--result-weight", "30", "--cooldown", "0"], {"--arith-steps": 600, "--sft-steps": 800}),
        "execute": execute,
        "execute-more": execute,  # the same stage again, on fresh tasks
        "latent": (LATENT_MIX, latent_args, {"--sft-steps": 150}),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--from", dest="init_from", default=str(BUNDLED_MODEL), help="the model the first stage trains on"
    )
    parser.add_argument("--fresh", action="store_true", help="start from a fresh model instead (did not work)")
    parser.add_argument("--eval-tasks", type=int, default=300, help="held-out tasks scored at the end")
    parser.add_argument("--probe-tasks", type=int, default=100, help="greedy probe at each log line")
    parser.add_argument("--log-every", type=int, default=200)
    parser.add_argument(
        "--fixable-share",
        type=float,
        default=FIXABLE_SHARE,
        help="share of each execution batch: sum tries on tasks the try fixes",
    )
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's steps (a smoke run)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    work = out.with_name(out.name + "-stages")
    for path in (out, work):
        if path.exists():
            raise SystemExit(f"{path} exists; remove it or pick another --out")
    work.mkdir(parents=True)
    common = ["--seed", str(args.seed), "--probe-tasks", str(args.probe_tasks), "--log-every", str(args.log_every)]
    start_model = None if args.fresh else args.init_from
    previous, timings = start_model, {}
    stages = recipe_stages(args.fixable_share)
    for number, (name, (mix, stage_args, steps)) in enumerate(stages.items()):
        last = number == len(stages) - 1
        target = out if last else work / name
        scaled = [str(part) for flag, n in steps.items() for part in (flag, max(1, round(n * args.steps_scale)))]
        argv_stage = [*build_tiny_model.mix_arguments(mix), *COMMON, *stage_args, *scaled, *common]
        argv_stage += ["--data-seed", str(args.seed + 1000 * number)]  # fresh tasks in every stage
        argv_stage += ["--out", str(target), "--eval-tasks", str(args.eval_tasks if last else 0)]
        if previous:
            argv_stage += ["--init-from", str(previous)]
        else:
            argv_stage += ["--embed-std", "0.1"]  # a fresh 128-wide embedding (scripts/README.md section 7)
        print(json.dumps({"stage": name, "argv": argv_stage}), flush=True)
        start = time.time()
        build_tiny_model.main(argv_stage)
        timings[name] = round(time.time() - start, 1)
        recipe = {"seed": args.seed, "from": start_model, "fixable_share": args.fixable_share, "wall_s": timings}
        (work / "recipe.json").write_text(json.dumps(recipe))
        previous = target
    write_preset(out)
    print(json.dumps({"recipe_wall_s": round(sum(timings.values()), 1), **timings}), flush=True)


def write_preset(model_dir: Path) -> None:
    """The shipped model's GRPO preset with GRPO_PRESET's changes, so that `mlx-grpo train --model`
    and the demo train the warm start as it was measured."""
    preset = {**read_config_file(BUNDLED_MODEL / PRESET_FILE), **GRPO_PRESET}
    header = "# GRPO settings for this model (written by scripts/aha_recipe.py; --config and flags still win)\n"
    (model_dir / PRESET_FILE).write_text(header + yaml.safe_dump(preset, sort_keys=False))


if __name__ == "__main__":
    main()
