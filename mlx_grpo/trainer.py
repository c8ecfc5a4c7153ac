"""The GRPO training loop: rollout -> rewards -> advantages -> clipped-loss updates of LoRA weights.

One step, as data flows (B prompts, G completions each, R = B·G rows, T completion tokens):

    tasks [B] -> prompts -> rollout.generate: tokens/mask/old_logps [R, T]   (prefill shared per group)
              -> text -> rewards [R] -> grpo.compute_advantages [R]
              -> μ times: for each micro-batch of rows: logprobs.sequence_logprobs [r, T]
                          -> grpo.policy_loss -> grads (LoRA only), summed exactly over micro-batches
                          -> clip to max_grad_norm -> AdamW update (skipped if non-finite)

Randomness is re-seeded from (seed, step) at the start of every step, and the task order is a
function of (seed, epoch), so a resumed run repeats exactly what an uninterrupted one does.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from mlx_grpo import checkpoint as ckpt
from mlx_grpo import rundir
from mlx_grpo.config import TrainConfig, memory_bytes, save_config
from mlx_grpo.countdown.data import load_tasks, split_tasks
from mlx_grpo.countdown.expr import extract_equation
from mlx_grpo.episodes import Episodes, run_episodes
from mlx_grpo.errors import UserError
from mlx_grpo.evaluate import evaluate
from mlx_grpo.grpo import batch_normalizer, compute_advantages, policy_loss
from mlx_grpo.logprobs import left_pad, sequence_logprobs, shared_prefix_length
from mlx_grpo.model import adapters_disabled, add_lora, check_model_source, load_model
from mlx_grpo.plots import plot_reward_accuracy
from mlx_grpo.progress import StepProgress
from mlx_grpo.rewards import RewardSet
from mlx_grpo.tracking import make_tracker


@dataclass
class RunState:
    """What the loop carries between steps (and a checkpoint restores)."""

    step: int = 0  # last completed step
    bad_steps: int = 0  # consecutive skipped (non-finite) updates
    stop_requested: bool = False
    history: list = field(default_factory=list)  # metrics lines written so far (for the summary)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**31)


def task_indices(step: int, batch_size: int, num_tasks: int, seed: int) -> list[int]:
    """Rows of the train split used at `step` (1-based): epochs of seeded permutations."""
    out = []
    for position in range((step - 1) * batch_size, step * batch_size):
        epoch, offset = divmod(position, num_tasks)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(num_tasks)[offset]))
    return out


def _set_memory_limit(max_memory: str | None) -> None:
    """On Metal, fail with an allocation error instead of freezing the machine; no-op elsewhere."""
    if not mx.metal.is_available():
        return
    if max_memory is None:
        limit = int(mx.device_info()["max_recommended_working_set_size"])
    else:
        limit = memory_bytes(max_memory)
    mx.set_memory_limit(limit)


class Trainer:
    """Holds the model, data and optimizer of one run; `run()` is the loop."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True):
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.progress = progress
        self.overwrite = overwrite
        self.reward_set = RewardSet.from_specs(config.rewards)
        check_model_source(config.model)
        self.lock = rundir.acquire_lock(self.run_dir)  # the one writer from here on; run() releases it
        try:
            self._setup(config, resume, overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, config: TrainConfig, resume: bool, overwrite: bool) -> None:
        self.resume_from = rundir.prepare_run_dir(self.run_dir, config.to_dict(), resume=resume, overwrite=overwrite)
        tasks = load_tasks(config.dataset, seed=config.seed, num_samples=config.num_samples)
        self.train_tasks, self.test_tasks = split_tasks(tasks, config.test_size)
        self.eval_tasks = self.test_tasks[: config.eval_samples]
        _set_memory_limit(config.max_memory)
        self.model, self.tokenizer = load_model(
            config.model, quantize=config.quantize, dtype=config.dtype, trust_remote_code=config.trust_remote_code
        )
        self.adapter_config = add_lora(
            self.model,
            rank=config.lora_rank,
            scale=config.lora_scale,
            dropout=config.lora_dropout,
            num_layers=config.lora_layers,
            seed=config.seed,
        )
        self.adapter_config["base_model"] = config.model
        self.optimizer = optim.AdamW(learning_rate=self._schedule(), weight_decay=config.weight_decay)
        self.optimizer.init(self.model.trainable_parameters())
        self.loss_and_grad = nn.value_and_grad(self.model, self._loss)
        self.state = RunState()
        self.tracker = None  # made in run(), once the run dir may be written

    def _schedule(self):
        lr = self.config.learning_rate
        if self.config.warmup_steps == 0:
            return lr
        warm = optim.linear_schedule(lr / self.config.warmup_steps, lr, self.config.warmup_steps)
        return optim.join_schedules([warm, lambda _: mx.array(lr)], [self.config.warmup_steps])

    # --- one step ----------------------------------------------------------------------------
    def sample(self, step: int) -> Episodes:
        c = self.config
        idx = task_indices(step, c.batch_size, len(self.train_tasks), c.seed)
        return run_episodes(
            self.model,
            self.tokenizer,
            [self.train_tasks[i] for i in idx],
            group_size=c.num_generations,
            max_tokens=c.max_completion_length,
            temperature=c.temperature,
            top_p=c.top_p,
            top_k=c.top_k,
            reward_set=self.reward_set,
            enable_thinking=c.enable_thinking,
            prefill=c.prefill,
            seed=step_seed(c.seed, step),
        )

    def _logps(self, model, batch: dict, differentiable: bool = True) -> mx.array:
        """Log-probs [r, T] of a micro-batch's completion tokens under the current weights."""
        return sequence_logprobs(
            model,
            batch["prompts"],
            batch["prompt_pad"],
            batch["tokens"],
            batch["mask"],
            temperature=self.config.temperature,
            prompt_index=batch["prompt_index"],
            shared=batch["shared"],
            differentiable=differentiable,
        )

    def _loss(self, model, batch, old_logps, ref_logps, advantages, normalizer):
        logps = self._logps(model, batch)  # [r, T]
        c = self.config
        return policy_loss(
            logps,
            old_logps,
            advantages,
            batch["mask"],
            ref_logps=ref_logps,
            beta=c.beta,
            epsilon_low=c.epsilon,
            epsilon_high=c.epsilon_high,
            loss_type=c.loss_type,
            max_completion_length=c.max_completion_length,
            normalizer=normalizer,
        )

    def _fixed_logps(self, micro_batches) -> mx.array:
        """Log-probs under the current weights, no gradient: [R, T]."""
        out = mx.concatenate([self._logps(self.model, b, differentiable=False) for b in micro_batches])
        mx.eval(out)
        return out

    def _micro_batches(self, episodes: Episodes) -> list[dict]:
        """Split the R rows into `grad_accumulation` micro-batches; each carries the distinct prompts
        of its rows once (`prompts [b, P]`, their shared prefix in front) and `prompt_index [r]` pointing into them."""
        rollout, G = episodes.rollout, self.config.num_generations
        out = []
        for rows in np.array_split(np.arange(episodes.num_rows), self.config.grad_accumulation):
            groups, prompt_index = np.unique(rows // G, return_inverse=True)
            ids = [rollout.prompt_ids[g] for g in groups]
            shared = shared_prefix_length(ids)
            prompts, prompt_pad = left_pad(ids, shared=shared)
            idx = mx.array(rows)
            out.append(
                {
                    "rows": idx,
                    "prompts": prompts,
                    "prompt_pad": prompt_pad,
                    "shared": shared,
                    "prompt_index": mx.array(prompt_index.astype(np.int32)),
                    # sampled tokens are data for the update, not a function of the weights
                    "tokens": mx.stop_gradient(rollout.tokens[idx]),
                    "mask": mx.stop_gradient(rollout.mask[idx]),
                }
            )
        return out

    def update(self, episodes: Episodes, advantages: mx.array) -> dict:
        """μ clipped-loss updates on one batch of episodes (`advantages [R]`); returns loss metrics."""
        c = self.config
        rollout = episodes.rollout
        micro_batches = self._micro_batches(episodes)
        # The sampler's log-probs are those of the truncated (top-p / top-k) distribution; the
        # ratio must compare like with like, so then the old policy is re-scored in full.
        old_logps = rollout.logps if (c.top_p == 1.0 and c.top_k == 0) else self._fixed_logps(micro_batches)
        ref_logps = None
        if c.beta > 0:
            with adapters_disabled(self.model):
                ref_logps = self._fixed_logps(micro_batches)
        normalizer = batch_normalizer(rollout.mask, c.loss_type, c.max_completion_length)
        sums: dict = {}
        for _ in range(c.num_iterations):
            grads, loss, metrics = None, mx.array(0.0), None
            for batch in micro_batches:
                rows = batch["rows"]
                (mb_loss, mb_metrics), mb_grads = self.loss_and_grad(
                    self.model,
                    batch,
                    old_logps[rows],
                    None if ref_logps is None else ref_logps[rows],
                    advantages[rows],
                    normalizer,
                )
                grads = mb_grads if grads is None else tree_map(mx.add, grads, mb_grads)
                loss = loss + mb_loss
                share = rows.size / episodes.num_rows
                metrics = {k: v * share + (metrics[k] if metrics else 0) for k, v in mb_metrics.items()}
            grads, grad_norm = optim.clip_grad_norm(grads, c.max_grad_norm)
            mx.eval(loss, grad_norm, metrics)
            finite = math.isfinite(loss.item()) and math.isfinite(grad_norm.item())
            if finite:
                self.optimizer.update(self.model, grads)
                mx.eval(self.model.trainable_parameters(), self.optimizer.state)
            for k, v in {"loss": loss, "grad_norm": grad_norm, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v.item() / c.num_iterations
            sums["skipped"] = sums.get("skipped", False) or not finite
        groups = mx.array(episodes.totals).reshape(-1, c.num_generations)
        sums["zero_adv_frac"] = float(mx.all(groups == groups[:, :1], axis=1).astype(mx.float32).mean().item())
        return sums

    # --- bookkeeping -------------------------------------------------------------------------
    def step_metrics(self, step, episodes, update_metrics, times) -> dict:
        lengths = np.array(episodes.rollout.lengths.tolist())
        totals = np.array(episodes.totals)
        m = {
            "step": step,
            "reward": float(totals.mean()),
            "reward_std": float(totals.std()),
            **{f"rewards/{k}": float(np.mean(v)) for k, v in episodes.rewards.items()},
            "accuracy": float(np.mean(episodes.correct)),
            "format_rate": float(np.mean(episodes.well_formed)),
            "completion_length/mean": float(lengths.mean()),
            "completion_length/max": int(lengths.max()),
            "truncated_frac": float(np.mean(episodes.rollout.truncated.tolist())),
            "zero_adv_frac": update_metrics.pop("zero_adv_frac"),
            "loss": update_metrics["loss"],
            "kl": update_metrics["kl"],
            "clip_frac/low": update_metrics["clip_frac_low"],
            "clip_frac/high": update_metrics["clip_frac_high"],
            "ratio/mean": update_metrics["ratio"],
            "grad_norm": update_metrics["grad_norm"],
            "lr": float(self.optimizer.learning_rate.item()),
            "skipped": bool(update_metrics["skipped"]),
            **{f"time/{k}": round(v, 4) for k, v in times.items()},
            "tokens_per_s": float(lengths.sum() / max(times["generate"], 1e-9)),
            "peak_memory_gb": mx.get_peak_memory() / 2**30,
        }
        return m

    def log_completions(self, step, episodes, advantages) -> None:
        records = []
        for r in range(episodes.num_rows):
            task = episodes.row_task(r)
            records.append(
                {
                    "step": step,
                    "prompt": episodes.row_prompt(r).text,
                    "completion": episodes.completions[r],
                    "target": task.target,
                    "nums": list(task.nums),
                    "rewards": {k: v[r] for k, v in episodes.rewards.items()},
                    "reward": episodes.totals[r],
                    "advantage": advantages[r],
                    "equation": extract_equation(episodes.completions[r]),
                }
            )
        rundir.append_jsonl(self.run_dir / rundir.COMPLETIONS, records)

    def run_eval(self) -> dict:
        c = self.config
        result = evaluate(
            self.model,
            self.tokenizer,
            self.eval_tasks,
            max_tokens=c.max_completion_length,
            enable_thinking=c.enable_thinking,
            prefill=c.prefill,
            seed=c.seed,
        )
        return {
            "eval/accuracy": result["accuracy"],
            "eval/format_rate": result["format_rate"],
            "eval/equation_rate": result["equation_rate"],
            "eval/completion_length": result["completion_length"],
        }

    # --- the loop ----------------------------------------------------------------------------
    def run(self, on_step: Callable[[dict], None] | None = None) -> dict:
        """Train until max_steps (or Ctrl-C); return the final summary (last metrics + eval)."""
        with self.lock:
            return self._run(on_step)

    def _run(self, on_step: Callable[[dict], None] | None) -> dict:
        c = self.config
        if self.overwrite:
            rundir.clear_run_dir(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with make_tracker(c.report_to, self.run_dir, c) as self.tracker:
            if self.resume_from is not None:
                self.state.step = ckpt.load_checkpoint(self.resume_from, self.model, self.optimizer)["step"]
                self._truncate_logs(self.state.step)
            else:
                save_config(c, self.run_dir / "config.json")
                if c.eval_every > 0:
                    self._append_metrics({"step": 0, **self.run_eval()})
            bar = StepProgress(c.max_steps, initial=self.state.step, enabled=self.progress)
            with _graceful_interrupt(self.state):
                while self.state.step < c.max_steps and not self.state.stop_requested:
                    metrics = self.train_step(self.state.step + 1)
                    bar.update(metrics)
                    if on_step:
                        on_step(metrics)
            bar.close()
            self.save()
            if self.state.stop_requested:
                raise TrainingInterrupted(self.state.step, self.run_dir)
            return self.finish()

    def train_step(self, step: int) -> dict:
        c = self.config
        mx.random.seed(step_seed(c.seed, step))  # dropout and anything else drawing from the global key
        t0 = time.perf_counter()
        episodes = self.sample(step)
        advantages = compute_advantages(mx.array(episodes.totals), c.num_generations, c.scale_rewards)  # [R]
        t1 = time.perf_counter()
        update_metrics = self.update(episodes, advantages)
        t2 = time.perf_counter()
        times = {**episodes.seconds, "update": t2 - t1, "step": t2 - t0}
        metrics = self.step_metrics(step, episodes, update_metrics, times)
        self.state.bad_steps = self.state.bad_steps + 1 if metrics["skipped"] else 0
        if step % c.log_completions_every == 0 or step == 1:
            self.log_completions(step, episodes, advantages.tolist())
        if (c.eval_every and step % c.eval_every == 0) or step == c.max_steps:
            metrics.update(self.run_eval())
        self._append_metrics(metrics)
        self.state.step = step
        if self.state.bad_steps >= c.max_bad_steps:
            last = ckpt.latest_checkpoint(self.run_dir)
            where = f"the last good checkpoint {last.name} is intact" if last else "no checkpoint was written yet"
            raise UserError(
                f"stopped at step {step}: {self.state.bad_steps} consecutive updates had non-finite loss or gradients "
                f"(try a lower --learning-rate); {where}"
            )
        if step % c.save_every == 0:
            self.save()
        return metrics

    def save(self) -> None:
        latest = ckpt.latest_checkpoint(self.run_dir)
        if self.state.step == 0 or (latest is not None and latest.name == f"step-{self.state.step:06d}"):
            return  # nothing trained yet, or this step is already saved (end of run on a save step)
        ckpt.save_checkpoint(
            self.run_dir,
            self.state.step,
            self.model,
            self.adapter_config,
            self.optimizer,
            {"data_position": self.state.step * self.config.batch_size, "seed": self.config.seed},
        )

    def _append_metrics(self, metrics: dict) -> None:
        self.state.history.append(metrics)
        self.tracker.log(metrics, metrics["step"])
        rundir.append_jsonl(self.run_dir / rundir.METRICS, [metrics])

    def _truncate_logs(self, step: int) -> None:
        """Drop log lines written after the checkpoint being resumed (they will be written again)."""
        self.state.history = rundir.truncate_after(self.run_dir / rundir.METRICS, step)
        rundir.truncate_after(self.run_dir / rundir.COMPLETIONS, step)

    def finish(self) -> dict:
        summary = dict(self.state.history[-1]) if self.state.history else {}
        plot_reward_accuracy(self.state.history, self.run_dir / "plots" / "reward_accuracy.png")
        rundir.write_json(self.run_dir / rundir.SUMMARY, summary)
        return summary


class TrainingInterrupted(Exception):
    def __init__(self, step: int, run_dir: Path):
        self.step, self.run_dir = step, run_dir
        super().__init__(
            f"interrupted after step {step}; checkpoint saved. Resume with: "
            f"mlx-grpo train --output-dir {run_dir} --resume (plus the same options)"
        )


@contextmanager
def _graceful_interrupt(state: RunState):
    """First Ctrl-C: finish the current step, save, stop. Second Ctrl-C: stop at once."""

    def handler(signum, frame):
        if state.stop_requested:
            raise KeyboardInterrupt
        state.stop_requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Run GRPO training as configured; returns the final metrics summary."""
    return Trainer(config, resume=resume, overwrite=overwrite, progress=progress).run()
