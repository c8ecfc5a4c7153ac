"""mlx-grpo itself: its batched rollout, or its full GRPO step split into generate / score / update.

options: {"mode": "rollout" | "step"}. The engine is imported lazily: where it is not installed
yet the runner reports "not available" and bench.py goes on. `rollout` and `grpo_step` are the only
two functions here that know the engine's API.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlx.core as mx
from common import load_spec, measure_rollout, step_result, write_result

TOY_REWARD = f"{Path(__file__).resolve().with_name('common.py')}:toy_reward"


def rollout(spec: dict) -> dict:
    """`mlx_grpo.rollout.generate` on the benchmark's rows, every row forced to max_tokens."""
    from mlx_lm import load

    from mlx_grpo.rollout import generate
    from mlx_grpo.sampling import SamplingOptions

    model, tokenizer = load(spec["model"])
    prompt_ids = [tokenizer.apply_chat_template(m, add_generation_prompt=True) for m in spec["messages"]]
    generated: dict[int, int] = {}  # max_tokens -> tokens generated over all rows (last run)

    def run(max_tokens: int) -> None:
        out = generate(
            model,
            prompt_ids,
            group_size=spec["group_size"],
            sampling=SamplingOptions(max_tokens, spec["temperature"]),
            eos_ids=[],
            seed=spec["seed"],
        )
        mx.eval(out.tokens, out.logps)
        generated[max_tokens] = int(out.lengths.sum().item())

    T, rows = spec["max_tokens"], len(prompt_ids) * spec["group_size"]
    result = measure_rollout(run, rows, T, warmup=spec["warmup"], repeats=spec["repeats"])
    return {
        **result,
        "generated_tokens": generated[T],
        "prompt_tokens": sum(len(p) for p in prompt_ids) * spec["group_size"],
        "peak_mx_gib": mx.get_peak_memory() / 2**30,
    }


def grpo_step(spec: dict) -> dict:
    """`mlx_grpo.trainer.run` on the benchmark's tasks, with the toy reward; per-step metrics."""
    from mlx_grpo import trainer
    from mlx_grpo.config import TrainConfig
    from mlx_grpo.episodes import EpisodeSource

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "tasks.jsonl"  # the B tasks, repeated so that the train/test split keeps them all
        data.write_text("".join(json.dumps(t) + "\n" for t in spec["tasks"] * 10))
        steps = spec["warmup"] + spec["repeats"]
        config = TrainConfig(
            model=spec["model"],
            dataset=str(data),
            num_samples=10 * len(spec["tasks"]),
            test_size=0.1,
            batch_size=len(spec["tasks"]),
            num_generations=spec["group_size"],
            max_completion_length=spec["max_tokens"],
            temperature=spec["temperature"],
            top_p=1.0,  # the peers sample from the full distribution, without a prefill or a thinking budget
            top_k=0,
            prefill="",
            max_thinking_tokens=0,
            rewards=[TOY_REWARD],
            loss_type="grpo",
            beta=spec["beta"],
            learning_rate=spec["learning_rate"],
            lora_rank=spec["lora_rank"],
            max_steps=steps,
            eval_every=0,
            save_every=steps,
            log_completions_every=steps,
            seed=spec["seed"],
            output_dir=str(Path(tmp) / "run"),
        )
        training = trainer.prepare(config)
        # no stop token: every row generates exactly max_tokens
        source = EpisodeSource(
            training.model, training.tokenizer, training.train_tasks, config, training.reward_set, []
        )
        sampled = []

        def sample_and_keep(step: int):  # keeps the last step's episodes, to count its prompt tokens
            sampled[:] = [source(step)]
            return sampled[0]

        metrics: list[dict] = []
        trainer.run(training, source=sample_and_keep, on_step=metrics.append, progress=False)
        metrics = metrics[spec["warmup"] :]
    parts = {name: [m[f"time/{name}"] for m in metrics] for name in ("generate", "score", "update")}
    result = step_result([m["time/step"] for m in metrics], **parts)
    result["completion_tokens"] = metrics[-1]["completion_length/mean"] * len(spec["tasks"]) * spec["group_size"]
    result["prompt_tokens"] = sum(len(ids) for ids in sampled[0].rollout.prompts.ids) * spec["group_size"]
    result["peak_mx_gib"] = max(m["peak_memory_gb"] for m in metrics)
    return result


def main() -> None:
    spec, out = load_spec()
    try:
        result = {"rollout": rollout, "step": grpo_step}[spec["options"]["mode"]](spec)
    except ImportError as e:  # the engine has not landed in this checkout
        result = {"status": "not available", "note": f"mlx-grpo engine missing ({e})"}
    write_result(out, result)


if __name__ == "__main__":
    main()
