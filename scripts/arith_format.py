"""How reliably can the bundled model's shape compute one trace step, by how the result is written?

    python scripts/arith_format.py --steps 2000 --formats plain,reversed > arith.jsonl

A self-check pays only when the model computes a candidate's value right. This trains a fresh
Qwen3 of the recipe's shape (the bundled tokenizer: one token per digit) on single step lines
`a op b = c`, the lines of the solver's worked solutions and of search traces' wrong candidates
for generated tasks, with the loss on the result only, and reports greedy exact-match accuracy of
the result on held-out lines. Formats of the result:

- plain: "44 + 19 = 63", as the traces write it;
- reversed: the result's digits least significant first ("44 + 19 = 36"), the order in which
  addition, subtraction and multiplication produce them (a carry is known before the next digit).

Results are in scripts/README.md (section 6).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlx_grpo import modelgen
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.solver import solve
from mlx_grpo.countdown.traces import wrong_candidate

SHAPE = dict(hidden_size=128, num_hidden_layers=4, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2)


def step_lines(num_tasks: int, seed: int) -> list[tuple[str, str]]:
    """(left side "44 + 19 = ", result "63") of every integer step of solutions and wrong candidates."""
    rng, lines = random.Random(seed), []
    for task in generate_tasks(num_tasks, seed):
        steps = solve(task.nums, task.target).steps + (wrong_candidate(task.nums, task.target, rng) or [])
        for step in steps:
            left, result = step.rsplit("= ", 1)
            if "/" not in result and "(" not in step:  # integer steps only, as the search traces write
                lines.append((left + "= ", result))
    return lines


def encode(tokenizer, lines, fmt: str) -> tuple[mx.array, mx.array]:
    """Ids `[N, L]` (left side, result, newline; right-padded) and a mask `[N, L-1]` on the result and newline."""
    rows = []
    for left, result in lines:
        written = result[::-1] if fmt == "reversed" else result
        prompt, target = tokenizer.encode(left), tokenizer.encode(written + "\n")
        rows.append((prompt + target, len(prompt)))
    width = max(len(r) for r, _ in rows)
    ids = np.zeros((len(rows), width), dtype=np.int32)
    mask = np.zeros((len(rows), width - 1), dtype=np.float32)
    for i, (row, start) in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, start - 1 : len(row) - 1] = 1.0
    return mx.array(ids), mx.array(mask)


def loss_fn(model, ids, mask):
    logits = model(ids[:, :-1]).astype(mx.float32)  # [B, L-1, V]
    return (nn.losses.cross_entropy(logits, ids[:, 1:]) * mask).sum() / mask.sum()


def exact_match(model, ids, mask, ops: list[str]) -> dict[str, float]:
    """Share of rows whose every result token is the argmax given the true prefix (teacher forcing
    equals greedy decoding here: a row is right only if all its tokens are), overall and by operation."""
    predicted = mx.argmax(model(ids[:, :-1]), axis=-1)  # [N, L-1]
    right = np.array(((predicted != ids[:, 1:]) * mask).sum(axis=1) == 0)  # [N]
    ops = np.array(ops)
    return {"exact": float(right.mean())} | {f"exact {op}": float(right[ops == op].mean()) for op in "+-*/"}


def run(fmt: str, tokenizer, train, test, args) -> None:
    config = modelgen.qwen3_config(vocab_size=len(tokenizer.get_vocab()), **SHAPE)
    model = modelgen.init_qwen3(config, seed=args.seed)
    optimizer = optim.AdamW(learning_rate=args.lr, weight_decay=0.0)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    test_ids, test_mask = encode(tokenizer, test, fmt)
    ops = [left.split()[1] for left, _ in test]
    rng, start = random.Random(args.seed), time.process_time()
    for step in range(1, args.steps + 1):
        ids, mask = encode(tokenizer, rng.sample(train, args.batch_size), fmt)
        loss, grads = loss_and_grad(model, ids, mask)
        optimizer.update(model, optim.clip_grad_norm(grads, 1.0)[0])
        mx.eval(loss, model.parameters(), optimizer.state)
        if step % args.eval_every == 0:
            line = {"format": fmt, "step": step, "loss": round(loss.item(), 4)}
            line |= exact_match(model, test_ids, test_mask, ops) | {"cpu_s": round(time.process_time() - start)}
            print(json.dumps(line), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="plain,reversed")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import mlx_lm

    from mlx_grpo.demo import BUNDLED_MODEL

    _, tokenizer = mlx_lm.load(str(BUNDLED_MODEL))
    train, test = step_lines(4000, 2_000_000 + args.seed), step_lines(300, 3_000_000)
    for fmt in args.formats.split(","):
        run(fmt, tokenizer, train, test, args)


if __name__ == "__main__":
    main()
