"""mlx-lm-lora's GRPO step, run as its own CLI runs it (`mlx_lm_lora.train --train-mode grpo`).

Runs in its own venv (mlx-lm-lora==5.10.2 + mlx[cpu]). The CLI's `run(args, callback)` is called
in-process with the CLI's defaults plus the benchmark's workload, so that the step is timed by the
trainer's own per-report clock (steps_per_report=1) and the peak RSS covers what the CLI loads (a
second full model as the reference). One hook around its `generate_grpo`: the stop tokens are
cleared (every row runs to max_tokens) and the call is timed.
"""

from __future__ import annotations

import json
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from common import load_spec, step_result, toy_reward, write_result
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm_lora import train as cli
from mlx_lm_lora.trainer import grpo_trainer
from mlx_lm_lora.trainer.grpo_reward_functions import register_reward_function


class StepClock(TrainingCallback):
    def __init__(self):
        self.step_s: list[float] = []

    def on_train_loss_report(self, info: dict) -> None:
        self.step_s.append(1.0 / info["iterations_per_second"])


def full_length_timed_generate(seen: dict):
    """A stand-in for its generate_grpo: no stop token, timed, prompt and completion tokens counted."""
    original = grpo_trainer.generate_grpo

    def generate_grpo(*, tokenizer, end_token, prompt_tokens, group_size, **kwargs):
        eos = tokenizer.eos_token_ids
        tokenizer.eos_token_ids = []  # no stop token, no answer delimiter: full-length rows
        t0 = time.perf_counter()
        try:
            completions, texts, indices = original(
                tokenizer=tokenizer, end_token="", prompt_tokens=prompt_tokens, group_size=group_size, **kwargs
            )
        finally:
            seen["generate_s"].append(time.perf_counter() - t0)
            tokenizer.eos_token_ids = eos
        seen["prompt_tokens"] = sum(len(p) for p in prompt_tokens) * group_size
        seen["completion_tokens"] = sum(c.size for c in completions)
        return completions, texts, indices

    return generate_grpo


def cli_args(spec: dict, data_dir: Path, adapter_dir: Path):
    args = cli.build_parser().parse_args([])
    for key, value in cli.CONFIG_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    steps = spec["warmup"] + spec["repeats"]
    vars(args).update(
        model=spec["model"],
        train=True,
        train_mode="grpo",
        train_type="lora",
        data=str(data_dir),
        adapter_path=str(adapter_dir),
        iters=steps,
        batch_size=len(spec["messages"]),
        group_size=spec["group_size"],
        max_completion_length=spec["max_tokens"],
        temperature=spec["temperature"],
        beta=spec["beta"],
        epsilon=0.2,
        grpo_loss_type="grpo",
        learning_rate=spec["learning_rate"],
        lora_parameters={"rank": spec["lora_rank"], "dropout": 0.0, "scale": 20.0},
        num_layers=-1,
        reward_functions="bench_toy_reward",
        steps_per_report=1,
        steps_per_eval=10**9,
        save_every=10**9,
        val_batches=0,
        fuse=False,
        seed=spec["seed"],
        max_seq_length=4096,
    )
    return args


def main() -> None:
    spec, out = load_spec()
    register_reward_function("bench_toy_reward")(
        lambda prompts, completions, answer, types=None: toy_reward(completions)
    )
    seen: dict = {"generate_s": []}
    grpo_trainer.generate_grpo = full_length_timed_generate(seen)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        rows = [{"system": m[0]["content"], "prompt": m[1]["content"], "answer": ""} for m in spec["messages"]]
        (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        cli.run(cli_args(spec, data, Path(tmp) / "adapters"), training_callback=clock)
    w = spec["warmup"]
    result = step_result(clock.step_s[w:], generate=seen.pop("generate_s")[w:])
    result.update(seen, version=version("mlx-lm-lora"))
    write_result(out, result)


if __name__ == "__main__":
    main()
