"""Build the self-checking warm start of scripts/README.md section 7 (the bundled model), seeded.

    python scripts/build_tiny_model.py --out /tmp/base      # section 5's bare-answer model (~25 min)
    python scripts/aha_recipe.py --from /tmp/base --out /tmp/aha
    python scripts/ranks.py -n 2 scripts/aha_recipe.py --from /tmp/base --out /tmp/aha   # two ranks
    python scripts/aha_recipe.py --start-at answer --out /tmp/aha \
        --from scripts/results/aha/checkpoints/F7-execute-more     # the last two stages (~40 min)

Each stage is one `build_tiny_model.py` run that continues the last (`--init-from`) on fresh tasks
(data seed `--seed` + the stage's `DATA_SEEDS`); intermediate models go to `<out>-stages/<name>`,
the last stage to `<out>` with the GRPO preset it was measured with (`mlx_grpo.yaml`), and the wall
time of every stage to `<out>-stages/recipe.json`. The stages:

1. `arith`: single step lines and restatements in the reversed-digit notation (stage 0), then the
   sum-try mix with the step-line results weighted 30, where in-trace arithmetic appears as a
   phase change;
2. `execute`, `execute-more`: the same mix with the results weighted 5, a share 0.7 of every batch
   sum tries on tasks the try fixes (`--fixable-share`), where the try's execution keeps improving
   with steps;
3. `answer`: 600 more of them with the answer's equation weighted 5 as well (F7a5);
4. `latent`: 150 steps at lr 1e-4 that make the sum try rare (8% of the mix) by training only the
   thought's opening (`--opening-only`: where a trace stops adding up every number), while half of
   every batch is fixable sum tries trained after their opening (`--rehearse-share 0.5`), so the
   try stays as well executed as the stages before left it (R08).

Trained whole, a latent stage undid the execution GRPO then has to rely on (the excess line 0.97 ->
0.59 sampled) and every GRPO run on it ended near 0.15-0.18; see scripts/README.md section 7.
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
import supervised  # noqa: E402
import yaml  # noqa: E402

from mlx_grpo import distributed  # noqa: E402
from mlx_grpo.config import read_config_file  # noqa: E402
from mlx_grpo.demo import BUNDLED_MODEL  # noqa: E402
from mlx_grpo.presets import PRESET_FILE  # noqa: E402

# The sum try at a high share (mostly the sum try, some give-ups and worked solutions), and the low
# share of the latent stage; all in the reversed-digit notation, wrong candidates near misses.
SUM_MIX = build_tiny_model.TraceMix(bare=0.0, give_up=0.1, sum_first=0.8, near=True, reversed_digits=True)
LATENT_MIX = build_tiny_model.TraceMix(bare=0.0, give_up=0.35, sum_first=0.08, near=True, reversed_digits=True)
LATENT_LR = 1e-4
# The GRPO settings the warm start was measured with (scripts/README.md section 7): a sum try runs
# to ~170 tokens, and 8 prompts a step keep the demo's 60 steps near its 10 minutes on 2 cores; lr
# 1e-4 decayed to 0 over them (cosine) ended every seed 16-19 points up, where a constant 5e-5 ended
# seed 1 at +12-13 after a dip in its second half (scripts/README.md, the end of section 7).
GRPO_PRESET = {
    "batch_size": 8,
    "learning_rate": 1e-4,
    "lr_schedule": "cosine",
    "max_completion_length": 192,
    "max_steps": 60,
    "eval_every": 30,
    "save_every": 30,
    "eval_samples": 200,
}
COMMON = ["--batch-size", "32", "--max-tokens", "192"]
FIXABLE_SHARE = 0.7
# Each stage's data seed, added to --seed: those of the measured lineage (F7's first three stages,
# then F7a5's and R08's runs), all different, so no stage replays another's tasks.
DATA_SEEDS = {"arith": 0, "execute": 1000, "execute-more": 2000, "answer": 5000, "latent": 3000}


def recipe_stages(fixable: float = FIXABLE_SHARE) -> dict:
    """name -> (mix, arguments, steps): the steps of stage 0 (`--arith-steps`) and of the traces.
    `fixable`: the share of each execution batch that is sum tries on tasks the try fixes."""
    mix = dataclasses.replace(SUM_MIX, fixable=fixable)
    execute = (mix, ["--result-weight", "5", "--cooldown", "100"], {"--sft-steps": 1200})
    answer = (mix, ["--result-weight", "5", "--answer-weight", "5", "--cooldown", "100"], {"--sft-steps": 600})
    latent_args = ["--result-weight", "5", "--lr", str(LATENT_LR), "--cooldown", "50"]
    latent_args += ["--opening-only", "--rehearse-share", "0.5"]
    return {
        "arith": (SUM_MIX, ["--result-weight", "30", "--cooldown", "0"], {"--arith-steps": 600, "--sft-steps": 800}),
        "execute": execute,
        "execute-more": execute,  # the same stage again, on fresh tasks
        "answer": answer,
        "latent": (LATENT_MIX, latent_args, {"--sft-steps": 150}),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--from", dest="init_from", help="the model the first stage trains on (build_tiny_model.py's default)"
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
    parser.add_argument(
        "--start-at",
        choices=list(recipe_stages()),
        default="arith",
        help="skip the stages before this one; --from is then the stage before's model",
    )
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's steps (a smoke run)")
    args = parser.parse_args(argv)
    if not (args.init_from or args.fresh):
        parser.error("--from DIR (section 5's model: python scripts/build_tiny_model.py --out DIR) or --fresh")
    out = Path(args.out)
    work = out.with_name(out.name + "-stages")
    for path in (out, work):
        if path.exists():
            raise SystemExit(f"{path} exists; remove it or pick another --out")
    supervised.barrier()  # every rank has looked before rank 0 writes
    main_rank = distributed.is_main()
    if main_rank:
        work.mkdir(parents=True)
    common = ["--seed", str(args.seed), "--probe-tasks", str(args.probe_tasks), "--log-every", str(args.log_every)]
    start_model = None if args.fresh else args.init_from
    previous, timings = start_model, {}
    stages = recipe_stages(args.fixable_share)
    names = list(stages)
    stages = {name: stages[name] for name in names[names.index(args.start_at) :]}
    for number, (name, (mix, stage_args, steps)) in enumerate(stages.items()):
        last = number == len(stages) - 1
        target = out if last else work / name
        scaled = [str(part) for flag, n in steps.items() for part in (flag, max(1, round(n * args.steps_scale)))]
        argv_stage = [*build_tiny_model.mix_arguments(mix), *COMMON, *stage_args, *scaled, *common]
        argv_stage += ["--data-seed", str(args.seed + DATA_SEEDS[name])]  # fresh tasks in every stage
        argv_stage += ["--out", str(target), "--eval-tasks", str(args.eval_tasks if last else 0)]
        if previous:
            argv_stage += ["--init-from", str(previous)]
        else:
            argv_stage += ["--embed-std", "0.1"]  # a fresh 128-wide embedding (scripts/README.md section 7)
        if main_rank:
            print(json.dumps({"stage": name, "argv": argv_stage}), flush=True)
        start = time.time()
        build_tiny_model.main(argv_stage)
        timings[name] = round(time.time() - start, 1)
        recipe = {"seed": args.seed, "from": start_model, "start_at": args.start_at, "wall_s": timings}
        recipe |= {"fixable_share": args.fixable_share, "ranks": distributed.world_size()}
        if main_rank:
            (work / "recipe.json").write_text(json.dumps(recipe))
        previous = target
    if main_rank:
        write_preset(out)
        print(json.dumps({"recipe_wall_s": round(sum(timings.values()), 1), **timings}), flush=True)


def write_preset(model_dir: Path) -> None:
    """The shipped model's GRPO preset with GRPO_PRESET's changes, so that `mlx-grpo train --model`
    and the demo train the warm start as it was measured."""
    preset = {**read_config_file(BUNDLED_MODEL / PRESET_FILE), **GRPO_PRESET}
    header = "# GRPO settings for this model (written by scripts/aha_recipe.py; --config and flags still win)\n"
    (model_dir / PRESET_FILE).write_text(header + yaml.safe_dump(preset, sort_keys=False))


if __name__ == "__main__":
    from mlx_grpo.blas import maybe_reexec_with_openblas

    maybe_reexec_with_openblas()  # as the CLI does: OpenBLAS on a Linux CPU, the speed the figures were measured at
    supervised.one_blas_thread_per_rank()
    main()
