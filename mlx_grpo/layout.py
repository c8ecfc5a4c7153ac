"""The padded-row layout that generation and the update share.

Every row is its prompt, LEFT-padded to the batch's longest prompt P, followed by its completion
tokens, right-padded to T:

    prompts  [R, P]  int32   pad pad p0 p1 p2        (prompt_pad [R] = number of pad slots, here 2)
    tokens   [R, T]  int32   c0 c1 c2 EOS pad pad    (mask [R, T] = 1 1 1 1 0 0)

so the completions of all rows start at the same column P. Pad slots are masked out of attention
and RoPE positions skip them (`PaddedCache`), so a row's log-probs do not depend on how much padding
it carries (up to float rounding). Prompts that begin with the same tokens (every Countdown prompt
starts with the same system prompt) keep that shared prefix in front of the pad slots, so that it can
run through the model once, as one row:

    prompts  [R, P]  int32   s0 s1 pad pad p0 p1 p2   (shared = 2: columns [0, 2) are the same in every row)

`PromptBatch` holds B distinct prompts in this layout; generation builds it once per step and the
update's micro-batches select their groups' rows from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np


@dataclass(frozen=True)
class PromptBatch:
    """B distinct prompts in the padded layout.

    ids: the B prompts as token-id lists.
    tokens: `[B, P]` int32, left-padded with the shared prefix in front (`left_pad`).
    pad: `[B]` int32 pad slots of each row, starting at column `shared`.
    shared: leading columns that are the same tokens in every row.
    """

    ids: list[list[int]]
    tokens: mx.array
    pad: mx.array
    shared: int

    @classmethod
    def build(cls, prompt_ids: list[list[int]]) -> PromptBatch:
        shared = shared_prefix_length(prompt_ids)
        return cls([list(ids) for ids in prompt_ids], *left_pad(prompt_ids, shared=shared), shared)

    def select(self, groups: np.ndarray) -> PromptBatch:
        """The prompts `groups [b]` (indices into this batch), without the pad columns none of them needs."""
        if np.array_equal(groups, np.arange(len(self.ids))):
            return self
        index = mx.array(np.asarray(groups, dtype=np.int32))
        tokens, pad = self.tokens[index], self.pad[index]  # [b, P], [b]
        spare = int(pad.min().item())  # pad columns every selected row has
        if spare:
            tokens = mx.concatenate([tokens[:, : self.shared], tokens[:, self.shared + spare :]], axis=1)
            pad = pad - spare
        return PromptBatch([self.ids[g] for g in groups], tokens, pad, self.shared)


def shared_prefix_length(prompt_ids: list[list[int]]) -> int:
    """Tokens at the start of every prompt, leaving each at least one token of its own (0 for one prompt).

    Example: `[[1, 2, 3, 4], [1, 2, 5]] -> 2`.
    """
    if len(prompt_ids) < 2:
        return 0
    first, limit = prompt_ids[0], min(len(ids) for ids in prompt_ids) - 1
    n = 0
    while n < limit and all(ids[n] == first[n] for ids in prompt_ids):
        n += 1
    return n


def left_pad(prompt_ids: list[list[int]], pad_id: int = 0, shared: int = 0) -> tuple[mx.array, mx.array]:
    """Left-pad token-id lists into one array.

    Args:
        prompt_ids: N non-empty lists of token ids.
        pad_id: token id written into the pad slots (it is never attended to).
        shared: the first `shared` tokens, the same in every list (`shared_prefix_length`), stay in
            front of the pad slots so that they can be run once for all rows.

    Returns:
        `(prompts [N, P] int32, prompt_pad [N] int32)` with P the longest length, e.g.
        `[[5, 6, 7], [8]] -> ([[5, 6, 7], [0, 0, 8]], [0, 2])`, and with `shared=1`
        `[[5, 6, 7], [5, 8]] -> ([[5, 6, 7], [5, 0, 8]], [0, 1])`.
    """
    longest = max(len(ids) for ids in prompt_ids)
    rows = [list(ids[:shared]) + [pad_id] * (longest - len(ids)) + list(ids[shared:]) for ids in prompt_ids]
    pads = [longest - len(ids) for ids in prompt_ids]
    return mx.array(rows, dtype=mx.int32), mx.array(pads, dtype=mx.int32)


def pad_slots(columns: mx.array, pad_start, prompt_pad: mx.array) -> mx.array:
    """`[N, S]` bool: True where key column `columns [S]` is one of row r's pad slots,
    `[pad_start, pad_start + prompt_pad[r])` (the layout of `left_pad`)."""
    return (columns >= pad_start) & (columns < pad_start + prompt_pad[:, None])


class PaddedCache:
    """Stand-in for a KV cache during one pass over padded rows (one instance per layer).

    Row r's pad slots are the columns `[pad_start, pad_start + prompt_pad[r])`, before the pass's first
    real token: they are masked out of attention (a pad query attends to itself only, which keeps it
    finite on every backend) and RoPE positions skip them. The pass may continue keys/values already
    computed for the columns before it (`keys`/`values` `[N or 1, heads, S, head_dim]`; 1: the same
    for every row). Keeps all the keys/values it saw, which a later pass or `rollout` continues from.
    """

    def __init__(
        self, prompt_pad: mx.array, pad_start: int = 0, keys: mx.array | None = None, values: mx.array | None = None
    ):
        self.prompt_pad, self.pad_start = prompt_pad, pad_start  # [N], int
        self.keys, self.values = keys, values
        self.start = 0 if keys is None else keys.shape[2]  # column of the pass's first token
        self.offset = self.start - prompt_pad  # [N] RoPE position of that column

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        if self.keys is not None:  # [N, heads, L, head_dim] after the earlier columns
            shape = (keys.shape[0], *self.keys.shape[1:])
            keys = mx.concatenate([mx.broadcast_to(self.keys, shape), keys], axis=2)
            values = mx.concatenate([mx.broadcast_to(self.values, shape), values], axis=2)
        self.keys, self.values = keys, values
        return keys, values

    def make_mask(self, N: int, **kwargs) -> mx.array:
        cols = mx.arange(self.start + N)  # key columns
        query = mx.arange(self.start, self.start + N)[:, None]  # [L, 1] column of each query
        pad = pad_slots(cols, self.pad_start, self.prompt_pad)[:, None]  # [N, 1, S + L]
        return ((cols <= query) & (~pad | (cols == query)))[:, None]  # [N, 1, L, S + L]
