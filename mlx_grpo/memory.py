"""What one GRPO step holds in memory, the micro-batch that fits a budget, and the peaks it reached.

A step holds the weights throughout, then (not at once):

    rollout:  per layer a keys + values buffer [R, kv_heads, P + T, head_dim] in the model's dtype
    update:   per micro-batch of r rows x L = P + T positions, with one block's activations
              block = r * L * BLOCK_BYTES * (H + I) * dtype + r * ATTENTION_BYTES * heads * L^2 * 4
                plain:        every block's activations, layers * block
                checkpointed: every block's input and keys/values, layers * r * L * (H + 2 * kv) * dtype,
                              plus one block recomputed with its gradients, 2 * block
              plus the output layer's chunk work (`logprobs.chunk_nbytes`).

BLOCK_BYTES was measured by `scripts/bench_memory.py` and probes at the Qwen3-0.6B widths (MLX CPU,
float32: 0.44 MB per position per block, plain; 0.9 MB per position for the recomputed block); the
attention term is an allowance, not fitted. Counting every row's prompt (the update runs each prompt
once per group) overstates short completions, so the estimate errs high. In units of the dtype's
size, so bf16 needs about half. Before the first rollout the prompt length is not known:
`PROMPT_ALLOWANCE` positions stand for it.
"""

from __future__ import annotations

import resource
import sys

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


def step_bytes(model: nn.Module, rows: int, positions: int, micro_batches: int, checkpoint: bool) -> int:
    """Peak bytes of a whole step: the weights plus the larger of the rollout and one micro-batch's update."""
    update = update_bytes(model, rows // micro_batches, positions, checkpoint)
    return weight_bytes(model) + max(rollout_bytes(model, rows, positions), update)


def micro_batch_count(model: nn.Module, rows: int, positions: int, config) -> int:
    """Micro-batches to split `rows` into: `config.grad_accumulation` when set (checked against
    `config.max_memory` when that is set too), else the fewest whose step fits `max_memory` (1 without it).

    Raises:
        UserError: nothing fits the budget, or the explicit setting does not; the message says what would.
    """
    explicit, checkpoint = config.grad_accumulation, config.gradient_checkpointing
    if config.max_memory is None:
        return explicit or 1
    budget = memory_bytes(config.max_memory)
    counts = [k for k in range(1, rows + 1) if rows % k == 0]
    fits = [k for k in counts if step_bytes(model, rows, positions, k, checkpoint) <= budget]
    if explicit and explicit in fits:
        return explicit
    if not explicit and fits:
        return fits[0]
    need = step_bytes(model, rows, positions, explicit or rows, checkpoint) / GIB
    hint = f"--grad-accumulation {fits[0]}" if fits else _smallest_fix(model, rows, positions, checkpoint, budget)
    shape = f"{rows} rows x {positions} positions"
    setting = f"grad_accumulation {explicit}" if explicit else "any grad_accumulation"
    raise UserError(f"{shape} with {setting} needs ~{need:.1f} GiB, over --max-memory {config.max_memory}: {hint}")


def _smallest_fix(model, rows: int, positions: int, checkpoint: bool, budget: int) -> str:
    """What to change when no micro-batch count fits."""
    if not checkpoint and step_bytes(model, rows, positions, rows, True) <= budget:
        return "add --gradient-checkpointing"
    if weight_bytes(model) + rollout_bytes(model, rows, positions) > budget:
        return "the rollout's keys/values alone do not fit: lower --batch-size, --num-generations or --max-completion-length"
    return "lower --max-completion-length"


def peak_memory() -> dict:
    """{"peak_memory_gb": MLX's peak since start (or the last reset), "peak_rss_gb": the process's peak RSS}."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    return {"peak_memory_gb": mx.get_peak_memory() / GIB, "peak_rss_gb": rss_bytes / GIB}
