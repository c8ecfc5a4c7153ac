"""Data parallelism over MLX's distributed backends: who this process is, which share of a step it
owns, and the reductions that make W processes compute what one would.

`mlx.launch` starts W copies of `mlx-grpo train` (ring over TCP, JACCL over Thunderbolt 5 RDMA, MPI,
or NCCL on CUDA); `mx.distributed.init()` finds the job they form, or a group of one when nothing
launched us, so every function here is the identity for a single process.

- Each step's B prompts are split into W contiguous blocks of whole groups (`shard`): a group never
  spans ranks, and the global order of rows is rank 0's rows, then rank 1's, and so on.
- Whatever is a statistic of the whole batch is reduced: `all_sum` (token counts, loss sums,
  evaluation counts), `gather` (per-row values for the metrics line, logged completions) and
  `sum_gradients` (each rank's gradient is its rows' share of the one batch sum).
- `broadcast` copies rank 0's arrays to every rank (the restored checkpoint), so all ranks start
  from, and stay at, identical adapters.
- Every rank must make the same collective calls in the same order: a source that samples in rounds
  (until enough groups carry signal, `dynamic.py`) decides each round from what every rank found
  (`gather`), and a rank that holds no rows of a step still joins the update's sums, with zeros.

A peer that dies closes its sockets and the collective waiting on it fails at once (ring:
"connection to a peer was lost"): that becomes `PeerLost`, one line. A peer that hangs would block
the collective forever, so every wait runs under a watchdog that ends this process after
`MLX_GRPO_PEER_TIMEOUT` seconds (default 600) with one line; the run directory is written only by
rank 0 and its checkpoints atomically, so the last one stays intact either way.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from mlx_grpo.errors import UserError

PEER_TIMEOUT_ENV = "MLX_GRPO_PEER_TIMEOUT"
EXIT_PEER_TIMEOUT = 3
_DEFAULT_PEER_TIMEOUT = 600.0

_group = None
_watchdog = None  # started with a group of more than one rank


class PeerLost(UserError):
    """Another rank of the job died or its connection dropped."""

    exit_code = EXIT_PEER_TIMEOUT


def group():
    """This job's `mx.distributed` group (size 1 when not started by `mlx.launch`)."""
    global _group, _watchdog
    if _group is None:
        _group = mx.distributed.init()
        if _group.size() > 1:  # checks MLX_GRPO_PEER_TIMEOUT before the run starts
            _watchdog = _Watchdog(peer_timeout())
            _watchdog.start()
    return _group


def rank() -> int:
    return group().rank()


def world_size() -> int:
    return group().size()


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory."""
    return rank() == 0


def shard(count: int, of_rank: int | None = None, world: int | None = None) -> range:
    """The contiguous block of `range(count)` that a rank owns; the first `count % W` ranks own one more.

    Example: `shard(5, 0, 2) -> range(0, 3)`, `shard(5, 1, 2) -> range(3, 5)`.
    """
    of_rank = rank() if of_rank is None else of_rank
    world = world_size() if world is None else world
    size, extra = divmod(count, world)
    start = of_rank * size + min(of_rank, extra)
    return range(start, start + size + (of_rank < extra))


def all_sum(tree):
    """Sum over ranks of every array in `tree` (evaluated)."""
    if world_size() == 1:
        return tree
    return _reduced(tree, lambda t: tree_map(lambda x: mx.distributed.all_sum(x, group=group()), t), "a sum")


def sum_gradients(grads):
    """The batch gradient from each rank's share of it (its rows, normalised by the whole batch).

    `nn.average_gradients` (which packs small arrays into few all-reduces) divides the sum by W;
    the shares must be added, so it is scaled back by W (exact for W a power of two)."""
    world = world_size()
    if world == 1:
        return grads
    return _reduced(grads, lambda g: tree_map(lambda x: x * world, nn.average_gradients(g, group=group())), "gradients")


def broadcast(arrays: dict[str, mx.array]) -> dict[str, mx.array]:
    """Rank 0's `{name: array}` on every rank, whatever the others hold (names, shapes, dtypes)."""
    if world_size() == 1:
        return arrays
    spec = gather({k: [list(v.shape), str(v.dtype).split(".")[-1]] for k, v in arrays.items()})[0]
    if is_main():
        mine = arrays
    else:
        mine = {k: mx.zeros(shape, getattr(mx, dtype)) for k, (shape, dtype) in spec.items()}
    return all_sum(mine)  # rank 0's values plus zeros: exact


def gather(value) -> list:
    """Every rank's `value` (anything JSON can hold), in rank order."""
    if world_size() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    sizes = all_sum(_one_hot(len(data))).astype(mx.int32).tolist()  # [W] bytes each rank sends
    padded = np.zeros(max(sizes), dtype=np.uint8)
    padded[: len(data)] = data
    stacked = _reduced(mx.array(padded), lambda x: mx.distributed.all_gather(x, group=group()), "a gather")
    rows = np.array(stacked).reshape(len(sizes), -1)  # [W, max bytes]
    return [json.loads(bytes(row[:n])) for row, n in zip(rows, sizes)]


def _one_hot(value: float) -> mx.array:
    out = np.zeros(world_size(), dtype=np.float32)
    out[rank()] = value
    return mx.array(out)


def _reduced(tree, collective, what: str):
    mx.eval(tree)  # this rank's own work first: only the wait for the others is timed
    with waiting(what):
        out = collective(tree)
        try:
            mx.eval(out)
        except RuntimeError as e:  # ring: "connection to a peer was lost"
            raise PeerLost(f"rank {rank()}: another rank of the job is gone ({e}) while waiting for {what}") from None
    return out


def peer_timeout() -> float:
    text = os.environ.get(PEER_TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else _DEFAULT_PEER_TIMEOUT
    except ValueError:
        raise UserError(f"{PEER_TIMEOUT_ENV} must be a number of seconds (got {text!r})") from None
    if not seconds > 0:
        raise UserError(f"{PEER_TIMEOUT_ENV} must be positive (got {text!r})")
    return seconds


class _Watchdog(threading.Thread):
    """Ends the process when one wait for the other ranks outlasts the timeout (a hung peer)."""

    def __init__(self, timeout: float):
        super().__init__(name="peer-watchdog", daemon=True)
        self.timeout, self.deadline, self.what = timeout, None, ""
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            with self.lock:
                late = self.deadline is not None and time.monotonic() > self.deadline
            if late:
                sys.stderr.write(
                    f"error: rank {rank()}: no answer from the other ranks for {self.timeout:g} s while waiting "
                    f"for {self.what} (a rank hung or the network dropped); stopping. The last checkpoint is "
                    f"intact (set {PEER_TIMEOUT_ENV} to wait longer)\n"
                )
                sys.stderr.flush()
                os._exit(EXIT_PEER_TIMEOUT)

    def arm(self, what: str | None) -> None:
        with self.lock:
            self.deadline = None if what is None else time.monotonic() + self.timeout
            self.what = what or ""


@contextmanager
def waiting(what: str):
    """Bound a wait on the other ranks by the peer timeout."""
    group()
    if _watchdog is None:  # one process: nobody to wait for
        yield
        return
    _watchdog.arm(what)
    try:
        yield
    finally:
        _watchdog.arm(None)
