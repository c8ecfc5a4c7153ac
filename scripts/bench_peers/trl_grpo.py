"""TRL's GRPO step: `trl.GRPOTrainer` + a PEFT LoRA on PyTorch (CPU), on the same model folder.

Runs in its own venv (torch==2.13.0 CPU wheel, trl, peft, transformers). transformers reads the
folder that mlx-grpo's modelgen wrote (float32 safetensors under Qwen3's names, tied embeddings).
options: {"gradient_checkpointing": bool} (TRL's default is on; off matches the issue's figure).
Settings that TRL defaults differently are pinned: float32 (TRL turns bf16 on by default), loss
`grpo`, β from the spec, LoRA on all linear layers, `min_new_tokens` = max_tokens so that every
row runs to full length. The step is timed from the Trainer's step-begin to step-end callbacks
(generation, scoring, forward/backward and the optimizer step); generation by wrapping its call.
"""

from __future__ import annotations

import tempfile
import time
from importlib.metadata import version

import torch
from common import load_spec, step_result, toy_reward, write_result
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer


class StepClock(TrainerCallback):
    def __init__(self):
        self.step_s: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_s.append(time.perf_counter() - self._t0)


class TimedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose generation calls are timed (one per step here)."""

    generate_s: list[float] = []

    def _generate_single_turn(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            self.generate_s.append(time.perf_counter() - t0)


def bench_toy_reward(completions, **_) -> list[float]:
    """common.toy_reward on the text of conversational completions."""
    return toy_reward([c[-1]["content"] if isinstance(c, list) else c for c in completions])


def main() -> None:
    spec, out = load_spec()
    torch.manual_seed(spec["seed"])
    rows = len(spec["messages"]) * spec["group_size"]
    steps = spec["warmup"] + spec["repeats"]
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            use_cpu=True,
            bf16=False,
            fp16=False,
            model_init_kwargs={"dtype": torch.float32},
            per_device_train_batch_size=rows,
            num_generations=spec["group_size"],
            max_completion_length=spec["max_tokens"],
            temperature=spec["temperature"],
            generation_kwargs={"min_new_tokens": spec["max_tokens"]},
            beta=spec["beta"],
            loss_type="grpo",
            learning_rate=spec["learning_rate"],
            gradient_checkpointing=spec["options"]["gradient_checkpointing"],
            max_steps=steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=spec["seed"],
        )
        trainer = TimedGRPOTrainer(
            model=spec["model"],
            reward_funcs=bench_toy_reward,
            args=config,
            train_dataset=Dataset.from_list([{"prompt": m} for m in spec["messages"]] * steps),
            peft_config=LoraConfig(
                r=spec["lora_rank"],
                lora_alpha=2 * spec["lora_rank"],
                lora_dropout=0.0,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
            callbacks=[clock],
        )
        trainer.train()
        lengths = [m for m in trainer.state.log_history if "completions/mean_length" in m]
    w = spec["warmup"]
    result = step_result(clock.step_s[w:], generate=TimedGRPOTrainer.generate_s[w:])
    prompt_tokens = sum(
        len(
            trainer.processing_class.apply_chat_template(
                m, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for m in spec["messages"]
    )
    result.update(
        version=version("trl"),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        prompt_tokens=prompt_tokens * spec["group_size"],
        completion_tokens=lengths[-1]["completions/mean_length"] * rows if lengths else None,
    )
    write_result(out, result)


if __name__ == "__main__":
    main()
