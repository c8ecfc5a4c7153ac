"""How reliably can the bundled model's shape compute one trace step, by how the result is written?

    python scripts/arith_format.py --steps 2000 --formats plain,reversed > arith.jsonl

A self-check pays only when the model computes a candidate's value right. This trains a fresh
Qwen3 of the recipe's shape (the bundled tokenizer: one token per digit) on single step lines
`a op b = c`, the lines of the solver's worked solutions and of search traces' wrong candidates
for generated tasks, with the loss on the result only, and reports greedy exact-match accuracy of
the result on held-out lines. Formats of the result:

- plain: "44 + 19 = 63", as the traces write it;
- reversed: the result's digits least significant first ("44 + 19 = 36"), the order in which
  addition, subtraction and multiplication produce them (a carry is known before the next digit);
- padded: every number zero-padded to three digits ("044 + 019 = 063"): each digit at a fixed
  distance from the one it is added to;
- notation: both, every number backwards and padded ("440 + 910 = 360", `countdown.notation`,
  the bundled model's thoughts); lines with a number above 999 are left out of the two padded formats.

`--oversample K` adds K more copies of every `*` and `/` line to the training lines.

Results are in scripts/README.md (section 6).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import supervised

from mlx_grpo import distributed, modelgen
from mlx_grpo.countdown import notation
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.traces import solution_candidate, wrong_candidate

WARMUP = 50
SHAPE = dict(hidden_size=128, num_hidden_layers=4, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2)


def step_lines(num_tasks: int, seed: int, exclude=frozenset()) -> list[tuple[int, str, int, int]]:
    """(a, op, b, a op b) of every step of the integer solutions and of one wrong candidate per task,
    for generated tasks not in `exclude`."""
    rng, lines = random.Random(seed), []
    for task in (t for t in generate_tasks(num_tasks, seed) if t not in exclude):
        for candidate in (solution_candidate(task), wrong_candidate(task.nums, task.target, rng)):
            lines += list(candidate.steps) if candidate else []
    return lines


FORMATS = {  # (left side "44 + 19 = ", result "63") of a step line, by format
    "plain": lambda a, op, b, v: (f"{a} {op} {b} = ", str(v)),
    "reversed": lambda a, op, b, v: (f"{a} {op} {b} = ", str(v)[::-1]),
    "padded": lambda a, op, b, v: (f"{a:03d} {op} {b:03d} = ", f"{v:03d}"),
    "notation": lambda a, op, b, v: (f"{notation.write(a)} {op} {notation.write(b)} = ", notation.write(v)),
}


def written(lines, fmt: str) -> list[tuple[str, str]]:
    """The lines as `fmt` writes them (the padded formats leave out lines with a number above 999)."""
    keep = (line for line in lines if fmt in ("plain", "reversed") or notation.fits(line[0], line[2], line[3]))
    return [FORMATS[fmt](*line) for line in keep]


def encode(tokenizer, lines: list[tuple[str, str]]) -> tuple[mx.array, mx.array]:
    """Ids `[N, L]` (left side, result, newline; right-padded) and a mask `[N, L-1]` on the result and newline."""
    rows = []
    for left, result in lines:
        prompt, target = tokenizer.encode(left), tokenizer.encode(result + "\n")
        rows.append((prompt + target, len(prompt)))
    width = max(len(r) for r, _ in rows)
    ids = np.zeros((len(rows), width), dtype=np.int32)
    mask = np.zeros((len(rows), width - 1), dtype=np.float32)
    for i, (row, start) in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, start - 1 : len(row) - 1] = 1.0
    return mx.array(ids), mx.array(mask)


def exact_match(model, ids, mask, ops: list[str]) -> dict[str, float]:
    """Share of rows whose every result token is the argmax given the true prefix (teacher forcing
    equals greedy decoding here: a row is right only if all its tokens are), overall and by operation."""
    predicted = mx.argmax(model(ids[:, :-1]), axis=-1)  # [N, L-1]
    right = np.array(((predicted != ids[:, 1:]) * mask).sum(axis=1) == 0)  # [N]
    ops = np.array(ops)
    return {"exact": float(right.mean())} | {f"exact {op}": float(right[ops == op].mean()) for op in set(ops)}


def restatements(num_tasks: int, seed: int, exclude=frozenset()) -> list[tuple[str, str]]:
    """("44 19 35 98 -> ", "440 910 530 890"): a task's numbers and target restated in the notation,
    as the bundled model's thoughts begin (`notation.restatement`), for generated tasks not in `exclude`."""
    lines = []
    for task in (t for t in generate_tasks(num_tasks, seed) if t not in exclude):
        left, _, right = notation.restatement([*task.nums, task.target]).partition(notation.RESTATES)
        lines.append((left + notation.RESTATES, right))
    return lines


def train_lines(
    model,
    tokenizer,
    train,
    test,
    *,
    steps,
    batch_size,
    lr,
    seed,
    eval_every,
    fmt="notation",
    written_too=((), ()),
    log=print,
):
    """AdamW (linear warmup over WARMUP steps, then `lr`) on `train` step lines written in `fmt`
    (and the (left, result) lines of `written_too[0]`), `batch_size` lines a step; logs exact match
    on `test` (and `written_too[1]`, as "exact ->") every `eval_every` steps and returns the last.
    Data-parallel over `mlx.launch`'s ranks as `supervised.py` says; rank 0 alone scores and logs."""
    schedule = optim.join_schedules([optim.linear_schedule(lr / WARMUP, lr, WARMUP), lambda _: mx.array(lr)], [WARMUP])
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.0)
    step_on = supervised.sft_step(model, optimizer)
    train, test = written(train, fmt) + list(written_too[0]), written(test, fmt) + list(written_too[1])
    test_ids, test_mask = encode(tokenizer, test)
    ops = ["->" if notation.RESTATES in left else left.split()[1] for left, _ in test]
    rng, start, line = random.Random(seed), time.process_time(), {}
    for step in range(1, steps + 1):
        ids, mask = encode(tokenizer, supervised.my_rows(rng.sample(train, batch_size)))
        loss = step_on(ids, mask)
        if (step % eval_every == 0 or step == steps) and distributed.is_main():
            line = {"format": fmt, "step": step, "loss": round(loss.item(), 4)}
            line |= exact_match(model, test_ids, test_mask, ops) | {"cpu_s": round(time.process_time() - start)}
            log(json.dumps(line))
    return line


def oversampled(lines, copies: int):
    """`lines` with `copies` more copies of every `*` and `/` line (they are rarer and harder)."""
    return lines + [line for line in lines if line[1] in "*/" for _ in range(copies)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="plain,notation", help=f"of {', '.join(FORMATS)}")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed-std", type=float, default=None, help="std of the embedding at init (default 0.02)")
    parser.add_argument("--oversample", type=int, default=0, help="extra copies of each * and / training line")
    args = parser.parse_args(argv)

    import mlx_lm

    from mlx_grpo.demo import BUNDLED_MODEL

    _, tokenizer = mlx_lm.load(str(BUNDLED_MODEL))
    train, test = oversampled(step_lines(4000, 2_000_000 + args.seed), args.oversample), step_lines(300, 3_000_000)
    settings = dict(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_every=args.eval_every
    )
    for fmt in args.formats.split(","):
        config = modelgen.qwen3_config(vocab_size=len(tokenizer.get_vocab()), **SHAPE)
        model = modelgen.init_qwen3(config, seed=args.seed, embed_std=args.embed_std)
        train_lines(model, tokenizer, train, test, fmt=fmt, **settings, log=lambda text: print(text, flush=True))


if __name__ == "__main__":
    from mlx_grpo.blas import maybe_reexec_with_openblas

    maybe_reexec_with_openblas()  # as the CLI does: OpenBLAS on a Linux CPU, the speed the figures were measured at
    main()
