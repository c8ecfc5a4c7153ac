"""The GRPO training loop: episodes -> advantages -> clipped-loss updates of the LoRA weights.

One step, as data flows (B prompts, G completions each, R = B·G rows, T completion tokens):

    source(step) -> Episodes: tokens/mask/old_logps [R, T], verdicts and rewards [R]   (episodes.py)
                 -> grpo.compute_advantages [R]
                 -> update(): μ clipped-loss steps over micro-batches of rows             (update.py)
                 -> metrics line (metrics.py) -> completions log, evaluation, checkpoint

`prepare` does every check and loads everything, writing nothing; `run` is the loop. The source of
episodes is any callable `step -> Episodes` (the default samples that step's tasks, `EpisodeSource`),
so a caller can drive the same loop with its own. Randomness is re-seeded from (seed, step) at the
start of every step and the data order is a function of (seed, step), so a resumed run repeats
exactly what an uninterrupted one does.

Under `mlx.launch` every rank runs this loop on its share of each step's groups (`distributed`);
the update, the metrics line and evaluation are reduced over ranks, so every rank holds the same
adapters and the same metrics. Rank 0 alone takes the lock and writes the run directory.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from mlx_grpo import checkpoint as ckpt
from mlx_grpo import distributed, rundir
from mlx_grpo.budget import ThinkingBudget
from mlx_grpo.config import TrainConfig, save_config
from mlx_grpo.countdown.data import load_tasks, split_tasks
from mlx_grpo.dynamic import DynamicSource, check_signal
from mlx_grpo.episodes import Episodes, EpisodeSource, step_seed
from mlx_grpo.errors import UserError
from mlx_grpo.evaluate import evaluate_as_trained
from mlx_grpo.grpo import compute_advantages
from mlx_grpo.memory import PROMPT_ALLOWANCE, MemoryPlan, budget_bytes, peak_memory, plan_memory
from mlx_grpo.metrics import join_rows, row_values, step_metrics
from mlx_grpo.model import add_lora, check_model_source, load_model
from mlx_grpo.plots import plot_reward_accuracy
from mlx_grpo.progress import StepProgress
from mlx_grpo.rewards import RewardSet
from mlx_grpo.tracking import make_tracker
from mlx_grpo.update import make_loss, update


@dataclass
class Training:
    """Everything one run holds: its settings, model, data, optimizer and where it writes."""

    config: TrainConfig
    model: nn.Module
    tokenizer: object
    optimizer: optim.Optimizer
    adapter_config: dict
    reward_set: RewardSet
    train_tasks: list
    eval_tasks: list
    resume_from: Path | None  # the checkpoint to continue from; None for a fresh run
    lock: rundir.RunLock | None  # the run directory's one writer (rank 0) holds it until the run ends
    memory: MemoryPlan  # checkpointing, rows per sampling call (config.gradient_checkpointing is resolved to it)
    overwrite: bool = False
    history: list = field(default_factory=list)  # metrics lines written so far (for the summary)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir)


def prepare(config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Training:
    """Lock and check the run directory, load the data and the model, add LoRA; nothing is written yet.

    Raises:
        UserError: another process holds the run directory, or any check fails (the lock is released).
    """
    reward_set = RewardSet.from_specs(config.rewards)
    check_signal(config.dynamic_sampling_signal, reward_set.names)
    check_model_source(config.model)
    _check_world(config)
    lock = rundir.acquire_lock(config.output_dir) if distributed.is_main() else None
    try:
        return _load(config, reward_set, lock, resume=resume, overwrite=overwrite)
    except BaseException:
        if lock:
            lock.release()
        raise


def _load(config: TrainConfig, reward_set: RewardSet, lock, *, resume: bool, overwrite: bool) -> Training:
    resume_from = None  # other ranks receive the restored state from rank 0
    if lock:
        resume_from = rundir.prepare_run_dir(config.output_dir, config.to_dict(), resume=resume, overwrite=overwrite)
    tasks = load_tasks(config.dataset, seed=config.seed, num_samples=config.num_samples)
    train_tasks, test_tasks = split_tasks(tasks, config.test_size)
    model, tokenizer = load_model(
        config.model, quantize=config.quantize, dtype=config.dtype, trust_remote_code=config.trust_remote_code
    )
    ThinkingBudget.of_config(config, tokenizer)  # a tokenizer the budget cannot use fails here, not mid-run
    adapter_config = add_lora(
        model,
        rank=config.lora_rank,
        scale=config.lora_scale,
        dropout=config.lora_dropout,
        num_layers=config.lora_layers,
        seed=config.seed,
    )
    adapter_config["base_model"] = config.model
    # a budget nothing fits fails here, not after the first rollout
    memory = plan_memory(model, config, PROMPT_ALLOWANCE + config.max_completion_length)
    config = config.replace(gradient_checkpointing=memory.checkpoint)
    _set_memory_limit(budget_bytes(model, config.max_memory))
    optimizer = optim.AdamW(learning_rate=_schedule(config), weight_decay=config.weight_decay)
    optimizer.init(model.trainable_parameters())
    eval_tasks = test_tasks[: config.eval_samples]
    return Training(
        config,
        model,
        tokenizer,
        optimizer,
        adapter_config,
        reward_set,
        train_tasks,
        eval_tasks,
        resume_from,
        lock,
        memory,
        overwrite,
    )


def run(
    training: Training,
    *,
    source: Callable[[int], Episodes] | None = None,
    on_step: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> dict:
    """Train until max_steps (or Ctrl-C); return the final summary (last metrics + eval).

    The run directory's lock is released when this returns or raises.
    """
    with training.lock or nullcontext():
        return _loop(training, source, on_step, progress and distributed.is_main())


def _loop(training: Training, source, on_step, progress: bool) -> dict:
    c, run_dir = training.config, training.run_dir
    plain = EpisodeSource(
        training.model,
        training.tokenizer,
        training.train_tasks,
        c,
        training.reward_set,
        groups_per_call=training.memory.groups_per_call,
    )
    dynamic = DynamicSource(plain, c.dynamic_sampling_signal, c.max_sampling_rounds) if c.dynamic_sampling else None
    source = source or dynamic or plain
    loss_and_grad = nn.value_and_grad(training.model, make_loss(c))
    start = _open_run_dir(training)
    stop = _StopFlag()
    tracker = make_tracker(c.report_to if distributed.is_main() else None, run_dir, c)
    with tracker, _graceful_interrupt(stop):
        log = _Logger(training, tracker)
        if start == 0 and c.eval_every > 0:
            log.metrics({"step": 0, **evaluate_policy(training)})
        bar = StepProgress(c.max_steps, initial=start, enabled=progress)
        step, bad_steps = start, 0
        while step < c.max_steps and not stop.agreed:
            step += 1
            metrics, episodes, advantages = train_step(training, source, loss_and_grad, step, stop)
            if step % c.log_completions_every == 0 or step == 1:
                log.completions(step, episodes, advantages)
            if (c.eval_every and step % c.eval_every == 0) or step == c.max_steps:
                metrics.update(evaluate_policy(training))
            log.metrics(metrics)
            bad_steps = bad_steps + 1 if metrics["skipped"] else 0
            _check_bad_steps(run_dir, step, bad_steps, c.max_bad_steps)
            if step % c.save_every == 0:
                save(training, step)
            bar.update(metrics)
            if on_step:
                on_step(metrics)
        bar.close()
    save(training, step)
    if stop.agreed:
        raise TrainingInterrupted(step, run_dir)
    return finish(training)


def train_step(training: Training, source, loss_and_grad, step: int, stop=None) -> tuple[dict, Episodes, list[float]]:
    """Sample, score and learn from one batch; returns (metrics line, this rank's episodes and
    advantages [R]). With `stop`, a Ctrl-C on any rank stops every rank after this step."""
    c = training.config
    # dropout and anything else drawing from the global key; each rank its own masks
    mx.random.seed(step_seed(c.seed, step, distributed.shard(c.batch_size).start))
    t0 = time.perf_counter()
    episodes = source(step)
    shares = distributed.gather({"rows": row_values(episodes), "stop": bool(stop and stop.requested)})
    rows = join_rows([s["rows"] for s in shares])  # the whole batch's, in rank order
    first = sum(len(s["rows"]["totals"]) for s in shares[: distributed.rank()])  # this rank's first row
    everyone = compute_advantages(mx.array(rows["totals"]), c.num_generations, c.scale_rewards)  # [R]
    advantages = everyone[first : first + episodes.num_rows]  # [R / W] this rank's rows
    t1 = time.perf_counter()
    result = update(training.model, training.optimizer, loss_and_grad, episodes.rollout, advantages, c)
    t2 = time.perf_counter()
    if stop is not None:
        stop.gathered = any(s["stop"] for s in shares)
    lr = float(training.optimizer.learning_rate.item())  # set by the update to the rate it used
    times = {**episodes.seconds, "update": t2 - t1, "step": t2 - t0}
    times, memory, most = _slowest(times, peak_memory(), {"micro_batches": result.micro_batches})
    result = replace(result, **most)  # a rank may hold fewer rows (dynamic sampling), even none
    metrics = step_metrics(step, rows, c.num_generations, result, times, lr=lr, memory=memory)
    return metrics, episodes, advantages.tolist()


def _slowest(*figures: dict) -> list[dict]:
    """Each figure's maximum over ranks: the step takes as long as its slowest rank."""
    shares = distributed.gather(figures)
    return [{k: max(s[i][k] for s in shares) for k in f} for i, f in enumerate(figures)]


def evaluate_policy(training: Training) -> dict:
    """Greedy accuracy, format and equation rate, length on the held-out tasks, as metrics."""
    result = evaluate_as_trained(
        training.model, training.tokenizer, training.eval_tasks, training.config, batch_size=training.memory.eval_rows
    )
    keys = ("accuracy", "format_rate", "equation_rate", "completion_length", "forced_frac", "self_check_rate")
    return {f"eval/{k}": result[k] for k in keys}


def save(training: Training, step: int) -> None:
    """Checkpoint `step` (and publish its adapters), unless nothing was trained or it is saved already."""
    if not distributed.is_main():
        return
    latest = ckpt.latest_checkpoint(training.run_dir)
    if step == 0 or (latest is not None and latest.name == f"step-{step:06d}"):
        return
    state = {"data_position": step * training.config.batch_size, "seed": training.config.seed}
    ckpt.save_checkpoint(training.run_dir, step, training.model, training.adapter_config, training.optimizer, state)


def finish(training: Training) -> dict:
    """Write the summary and the reward/accuracy plot; return the summary."""
    summary = dict(training.history[-1]) if training.history else {}
    if not distributed.is_main():
        return summary
    plot_reward_accuracy(training.history, training.run_dir / rundir.PLOTS / "reward_accuracy.png")
    rundir.write_json(training.run_dir / rundir.SUMMARY, summary)
    return summary


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Run GRPO training as configured; returns the final metrics summary."""
    return run(prepare(config, resume=resume, overwrite=overwrite), progress=progress)


class _Logger:
    """The run's metrics (history, tracker, metrics.jsonl) and sampled completions."""

    def __init__(self, training: Training, tracker):
        self.training, self.tracker = training, tracker

    def metrics(self, line: dict) -> None:
        self.training.history.append(line)
        if distributed.is_main():
            self.tracker.log(line, line["step"])
            rundir.append_jsonl(self.training.run_dir / rundir.METRICS, [line])

    def completions(self, step: int, episodes: Episodes, advantages: list[float]) -> None:
        """Every rank's rows, written by rank 0."""
        records = []
        for r, verdict in enumerate(episodes.verdicts):
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
                    "equation": verdict.answer,
                }
            )
        shares = distributed.gather(records)
        if distributed.is_main():
            rundir.append_jsonl(self.training.run_dir / rundir.COMPLETIONS, [r for share in shares for r in share])


def _open_run_dir(training: Training) -> int:
    """Create or restore the run directory (rank 0); give every rank rank 0's adapters and optimizer
    state; return the last completed step (0 for a fresh run)."""
    step = _restore(training) if distributed.is_main() else 0
    return _share_state(training, step)


def _share_state(training: Training, step: int) -> int:
    """Every rank takes rank 0's step, adapters and optimizer state (restored or freshly made)."""
    if distributed.world_size() == 1:
        return step
    model, optimizer = training.model, training.optimizer
    state = {"step": mx.array(step), **{f"model.{k}": v for k, v in tree_flatten(model.trainable_parameters())}}
    state.update({f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)})
    state = distributed.broadcast(state)
    model.update(tree_unflatten([(k[6:], v) for k, v in state.items() if k.startswith("model.")]))
    optimizer.state = tree_unflatten([(k[10:], v) for k, v in state.items() if k.startswith("optimizer.")])
    return int(state["step"].item())


def _restore(training: Training) -> int:
    run_dir = training.run_dir
    if training.overwrite:
        rundir.clear_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if training.resume_from is None:
        save_config(training.config, run_dir / rundir.CONFIG)
        return 0
    step = ckpt.load_checkpoint(training.resume_from, training.model, training.optimizer)["step"]
    # log lines written after that checkpoint will be written again
    training.history = rundir.truncate_after(run_dir / rundir.METRICS, step)
    rundir.truncate_after(run_dir / rundir.COMPLETIONS, step)
    return step


def _check_world(config: TrainConfig) -> None:
    """Data parallel: every rank takes the same number of whole groups of a plain step, enough to split
    into micro-batches (dynamic sampling's kept groups may then fall unevenly: `update` takes any count)."""
    world = distributed.world_size()
    if config.batch_size % world:
        raise UserError(f"batch_size {config.batch_size} must be a multiple of the {world} ranks (whole groups each)")
    if config.batch_size // world * config.num_generations % (config.grad_accumulation or 1):
        raise UserError(
            f"grad_accumulation {config.grad_accumulation} must divide each rank's "
            f"{config.batch_size // world * config.num_generations} rows (batch_size / ranks * num_generations)"
        )


def _check_bad_steps(run_dir: Path, step: int, bad_steps: int, max_bad_steps: int) -> None:
    if bad_steps < max_bad_steps:
        return
    last = ckpt.latest_checkpoint(run_dir)
    where = f"the last good checkpoint {last.name} is intact" if last else "no checkpoint was written yet"
    raise UserError(
        f"stopped at step {step}: {bad_steps} consecutive updates had non-finite loss or gradients "
        f"(try a lower --learning-rate); {where}"
    )


def _schedule(config: TrainConfig):
    """The learning rate by optimizer step: a linear warm-up, then constant or decayed to 0 at
    max_steps. A function of the step alone, which the checkpointed optimizer state carries."""
    lr, warmup = config.learning_rate, config.warmup_steps
    if config.lr_schedule == "constant" and warmup == 0:
        return lr
    decay_steps = max(config.max_steps - warmup, 1)
    after = {
        "constant": lambda _: mx.array(lr),
        "linear": optim.linear_schedule(lr, 0.0, decay_steps),
        "cosine": optim.cosine_decay(lr, decay_steps),
    }[config.lr_schedule]
    if warmup == 0:
        return after
    warm = optim.linear_schedule(lr / warmup, lr, warmup)
    return optim.join_schedules([warm, after], [warmup])


def _set_memory_limit(budget: int | None) -> None:
    """On Metal, MLX's memory limit: the budget, or without one the recommended working set; no-op elsewhere."""
    if mx.metal.is_available():
        mx.set_memory_limit(budget or int(mx.device_info()["max_recommended_working_set_size"]))


class TrainingInterrupted(Exception):
    def __init__(self, step: int, run_dir: Path):
        self.step, self.run_dir = step, run_dir
        super().__init__(
            f"interrupted after step {step}; checkpoint saved. Resume with: "
            f"mlx-grpo train --output-dir {run_dir} --resume (plus the same options)"
        )


class _StopFlag:
    requested = False  # a Ctrl-C reached this rank
    gathered = False  # a Ctrl-C had reached some rank by this step's gather of the requests

    @property
    def agreed(self) -> bool:
        """Stop after this step: alone at once; with other ranks only on what every rank gathered (a
        Ctrl-C landing after the gather is known to one rank, and stopping on it would leave the
        others waiting for it in the next step's gather)."""
        return self.gathered or (distributed.world_size() == 1 and self.requested)


@contextmanager
def _graceful_interrupt(stop: _StopFlag):
    """First Ctrl-C: finish the current step, save, stop. Second Ctrl-C: stop at once."""

    def handler(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
