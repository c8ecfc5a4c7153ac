"""One supervised step of the warm-start recipe, on one process or data-parallel over the ranks
that `mlx.launch` starts:

    mlx.launch -n 2 --backend ring --python .venv/bin/python scripts/build_tiny_model.py --out base

AdamW on the mean cross-entropy of the tokens a mask weighs, the gradient norm clipped at 1. With W
ranks each rank passes its own rows of one batch (`my_rows`); the token count, the loss and the
gradient are summed over ranks (`mlx_grpo.distributed`), so every rank takes the step that one
process takes on the whole batch (to rounding: tests/test_recipe.py) and the ranks' weights stay
the same. Why: a step computes on one core (MLX's CPU elementwise kernels, exp above all, run on one
thread, and OpenBLAS's second thread only spin-waits at these sizes), so on a 2-core machine two
ranks of half a batch each take about half the time of one process (scripts/README.md section 8).
Only rank 0 writes files and prints; `barrier` lets the others wait for what it wrote.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from mlx_grpo import distributed
from mlx_grpo.blas import use_one_thread


def completion_loss(model, ids: mx.array, mask: mx.array, tokens: mx.array | None = None) -> mx.array:
    """Cross-entropy of each next token, weighted by `mask` [B, L-1], over `tokens` (the weight of
    the whole batch, every rank's rows; default: this mask's)."""
    logits = model(ids[:, :-1]).astype(mx.float32)  # [B, L-1, V]
    ce = nn.losses.cross_entropy(logits, ids[:, 1:])  # [B, L-1]
    return (ce * mask).sum() / (mask.sum() if tokens is None else tokens)


def sft_step(model, optimizer):
    """`step(ids, mask) -> loss`: one AdamW step of every rank on the batch whose rows each rank
    passes; the loss is the whole batch's."""
    loss_and_grad = nn.value_and_grad(model, completion_loss)

    def step(ids: mx.array, mask: mx.array) -> mx.array:
        tokens = distributed.all_sum(mask.sum())
        loss, grads = loss_and_grad(model, ids, mask, tokens)
        loss, grads = distributed.all_sum(loss), distributed.sum_gradients(grads)
        optimizer.update(model, optim.clip_grad_norm(grads, 1.0)[0])
        mx.eval(loss, model.parameters(), optimizer.state)
        return loss

    return step


def my_rows(items: list) -> list:
    """This rank's contiguous block of a batch's items (all of them for one process)."""
    rows = distributed.shard(len(items))
    return items[rows.start : rows.stop]


def one_blas_thread_per_rank() -> None:
    """With several ranks, one OpenBLAS thread each: a second one spin-waits on the core that the
    other rank computes on (as `mlx_grpo.scorer`'s two processes do)."""
    if distributed.world_size() > 1:
        use_one_thread()


def barrier() -> None:
    """Wait until every rank gets here (under the peer timeout)."""
    distributed.all_sum(mx.zeros(1))
