"""What one GRPO step holds in memory, the plan that keeps it within a budget, and the peaks it reached.

A step holds the weights throughout, then (not at once):

    rollout:  per layer a keys + values buffer [rows, kv_heads, P + T, head_dim] in the model's dtype
    update:   per micro-batch of r rows x L = P + T positions, with one block's activations
              block = r * L * BLOCK_BYTES * (H + I) * dtype + r * ATTENTION_BYTES * heads * L^2 * 4
                plain:        every block's activations, layers * block
                checkpointed: every block's input and keys/values, layers * r * L * (H + 2 * kv) * dtype,
                              plus one block recomputed with its gradients, 2 * block
              plus the output layer's chunk work (`logprobs.chunk_nbytes`).

`plan_memory` turns a budget (`--max-memory`; "auto" = the weights + AUTO_WORK_BYTES) into the
rows one sampling call decodes (whole groups, `decode_rows`), whether to checkpoint, and so the
fewest micro-batches whose update fits (`micro_batch_count`, again each step for its real length).

BLOCK_BYTES was measured by `scripts/bench_memory.py` and probes at the Qwen3-0.6B widths (MLX CPU,
float32: 0.44 MB per position per block, plain; 0.9 MB per position for the recomputed block); the
attention term is an allowance, not fitted. Counting every row's prompt (the update runs each prompt
once per group) overstates short completions, so the estimate errs high (measured against it in
scripts/results/memory.md). In units of the dtype's size, so bf16 needs about half. Before the first
rollout the prompt length is not known: `PROMPT_ALLOWANCE` positions stand for it.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_grpo.config import memory_bytes
from mlx_grpo.errors import UserError
from mlx_grpo.logprobs import chunk_nbytes

GIB = 2**30
BLOCK_BYTES = 22.0  # activations kept per position per block, in (H + I) x dtype-size units (measured)
ATTENTION_BYTES = 3.0  # float32 [heads, L, L] blocks kept per row per block (scores, probabilities, ...)
PROMPT_ALLOWANCE = 256  # prompt positions assumed before any prompt is seen (Countdown's are ~150)
AUTO_WORK_BYTES = 4 * GIB  # --max-memory auto: the weights plus this (a 16 GB Mac keeps room for the OS)
DECODE_WORK_BYTES = GIB // 4  # a sampling call's work beside its keys/values: logits, sampling, a growth
EVAL_ROWS = 32  # held-out tasks an evaluation call decodes at most
CHECKPOINT_COST = 4 / 3  # time of a checkpointed update relative to a plain one (one more forward pass)


def _dims(model: nn.Module) -> tuple[int, int, int, int, int, int]:
    """(layers, hidden, intermediate, heads, kv_heads * head_dim, activation dtype bytes)."""
    a = model.args
    head_dim = getattr(a, "head_dim", None) or a.hidden_size // a.num_attention_heads
    dtype_bytes = model.model.norm.weight.dtype.size  # norms stay unquantized: the activations' dtype
    kv = a.num_key_value_heads * head_dim
    return a.num_hidden_layers, a.hidden_size, a.intermediate_size, a.num_attention_heads, kv, dtype_bytes


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all the model's parameters (base weights and adapters)."""
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def rollout_bytes(model: nn.Module, rows: int, positions: int) -> int:
    """The decode's keys/values buffers for `rows` rows of `positions` (prompt + completion) slots."""
    layers, _, _, _, kv, b = _dims(model)
    return 2 * layers * rows * positions * kv * b


def update_bytes(model: nn.Module, rows: int, positions: int, checkpoint: bool) -> int:
    """Peak bytes above the weights of the forward + backward of one micro-batch of `rows` rows."""
    layers, hidden, inter, heads, kv, b = _dims(model)
    block = rows * (BLOCK_BYTES * positions * (hidden + inter) * b + ATTENTION_BYTES * heads * positions**2 * 4)
    if checkpoint:
        activations = layers * rows * positions * (hidden + 2 * kv) * b + 2 * block
    else:
        activations = layers * block
    return int(activations + chunk_nbytes(model, 128))


def budget_bytes(model: nn.Module, max_memory: str | None) -> int | None:
    """The step's budget in bytes: `--max-memory` as a size, "auto" = the weights plus AUTO_WORK_BYTES,
    "none" (or None) = no budget."""
    if max_memory is None or max_memory == "none":
        return None
    if max_memory == "auto":
        return weight_bytes(model) + AUTO_WORK_BYTES
    return memory_bytes(max_memory)


def step_bytes(model: nn.Module, rows: int, positions: int, micro_batches: int, checkpoint: bool) -> int:
    """Peak bytes of a step's update: the weights plus one micro-batch's forward and backward. (The
    rollout is decoded in calls sized to the budget, `decode_rows`, so it never sets the peak.)"""
    largest = -(-rows // micro_batches)  # rows of the largest micro-batch
    return weight_bytes(model) + update_bytes(model, largest, positions, checkpoint)


def micro_batch_count(model: nn.Module, rows: int, positions: int, config) -> int:
    """Micro-batches to split `rows` into: `config.grad_accumulation` when set (checked against the
    budget when there is one), else the fewest whose update fits the budget (1 without one).

    Raises:
        UserError: nothing fits the budget, or the explicit setting does not; the message says what would.
    """
    explicit, checkpoint = config.grad_accumulation, bool(config.gradient_checkpointing)
    explicit = explicit and min(explicit, rows)  # a step may hold fewer rows (dynamic sampling)
    budget = budget_bytes(model, config.max_memory)
    if budget is None:
        return explicit or 1
    if explicit and step_bytes(model, rows, positions, explicit, checkpoint) <= budget:
        return explicit
    fits = _fitting_counts(model, rows, positions, checkpoint, budget)
    if not explicit and fits:
        return fits[0]
    need = step_bytes(model, rows, positions, explicit or rows, checkpoint) / GIB
    if fits:
        hint = f"--grad-accumulation {fits[0]}"
    elif not checkpoint and _fitting_counts(model, rows, positions, True, budget):
        hint = "add --gradient-checkpointing"
    else:
        hint = "lower --max-completion-length"
    shape = f"{rows} rows x {positions} positions"
    setting = f"grad_accumulation {explicit}" if explicit else "any grad_accumulation"
    raise UserError(f"{shape} with {setting} needs ~{need:.1f} GiB, over --max-memory {config.max_memory}: {hint}")


def _fitting_counts(model, rows: int, positions: int, checkpoint: bool, budget: int) -> list[int]:
    """The micro-batch counts (divisors of `rows`, ascending) whose update fits `budget`."""
    counts = [k for k in range(1, rows + 1) if rows % k == 0]
    return [k for k in counts if step_bytes(model, rows, positions, k, checkpoint) <= budget]


def decode_rows(model: nn.Module, positions: int, budget: int | None) -> int | None:
    """The most rows one sampling call may decode: their keys/values beside the weights within
    `budget` (None: no budget, no limit)."""
    if budget is None:
        return None
    return max(budget - weight_bytes(model) - DECODE_WORK_BYTES, 0) // rollout_bytes(model, 1, positions)


def _checkpointing_pays(model, rows: int, group: int, positions: int, budget: int) -> bool:
    """Whether the fewest checkpointed micro-batches that fit cost less time than the fewest plain ones.

    A micro-batch runs each of its prompts once, so splitting a group reruns its prompt: with G-row
    groups, k micro-batches run max(k, rows / G) prompts. Measured at the Qwen3-0.6B shape (scripts/
    results/memory.md): one group of 4 x 214 positions split into rows took 2x as long as whole; the
    checkpointed whole group took as long as the plain one (1.0x, loaded machine; CHECKPOINT_COST
    keeps the 4/3 of a second forward pass)."""
    plain = _fitting_counts(model, rows, positions, False, budget)
    checkpointed = _fitting_counts(model, rows, positions, True, budget)
    if not (plain and checkpointed):
        return not plain

    def positions_run(k: int) -> int:
        return max(k, rows // group) * PROMPT_ALLOWANCE + rows * (positions - PROMPT_ALLOWANCE)

    return CHECKPOINT_COST * positions_run(checkpointed[0]) < positions_run(plain[0])


@dataclass(frozen=True)
class MemoryPlan:
    """How a run keeps each step within its budget, decided once at start for its longest rows."""

    checkpoint: bool  # recompute each block in the backward pass
    micro_batches: int  # for the longest rows (each step counts again for its own length)
    groups_per_call: int | None  # most groups one sampling call decodes (None: no budget, no limit)
    eval_rows: int  # held-out tasks one evaluation call decodes (greedy: one row each)


def plan_memory(model: nn.Module, config, positions: int) -> MemoryPlan:
    """The plan for `config`'s steps of rows of at most `positions` (prompt + completion) slots.

    `gradient_checkpointing` None turns checkpointing on when it is needed to fit, or when it lets the
    micro-batches keep whole groups that would otherwise be split (`_checkpointing_pays`).

    Raises:
        UserError: the budget cannot hold one group's keys/values, or any update (see `micro_batch_count`).
    """
    rows, group = config.batch_size * config.num_generations, config.num_generations
    budget = budget_bytes(model, config.max_memory)
    checkpoint = config.gradient_checkpointing
    if checkpoint is None:
        checkpoint = budget is not None and _checkpointing_pays(model, rows, group, positions, budget)
    decodable = decode_rows(model, positions, budget)
    if decodable is not None and decodable < group:
        need = (weight_bytes(model) + DECODE_WORK_BYTES + rollout_bytes(model, group, positions)) / GIB
        raise UserError(
            f"one group's keys/values ({group} rows x {positions} positions) need ~{need:.1f} GiB with the weights, "
            f"over --max-memory {config.max_memory}: lower --num-generations or --max-completion-length"
        )
    micro_batches = micro_batch_count(model, rows, positions, config.replace(gradient_checkpointing=checkpoint))
    groups_per_call = None if decodable is None else decodable // group
    return MemoryPlan(checkpoint, micro_batches, groups_per_call, min(EVAL_ROWS, decodable or EVAL_ROWS))


def peak_memory() -> dict:
    """{"peak_memory_gb": MLX's peak since start (or the last reset), "peak_rss_gb": the process's peak RSS}."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    return {"peak_memory_gb": mx.get_peak_memory() / GIB, "peak_rss_gb": rss_bytes / GIB}
