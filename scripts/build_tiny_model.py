"""Build the bundled tiny Countdown model (`weights/countdown-tiny/`) from nothing, seeded.

    python scripts/build_tiny_model.py                      # the shipped recipe (~25 min of one core)
    python scripts/build_tiny_model.py --out /tmp/m --sft-steps 300 --seed 1
    python scripts/ranks.py -n 2 scripts/build_tiny_model.py --out /tmp/m   # data-parallel, two ranks

Two ranks (`ranks.py`, or `mlx.launch`) split every batch (`supervised.py`): on a 2-core machine a
step of one process computes on one core, so two take less time for the same model (to rounding).

Three stages, each reproducible from `--seed`:

1. Tokenizer: a byte-level BPE with digits split one per token (`modelgen.train_tokenizer`), trained
   on the project's own texts: the system prompt, the user prompt and the solver's worked solutions
   for generated tasks. ChatML and <think> tokens, and the chat template, come from modelgen.
2. Model: a Qwen3 (`model_type: qwen3`, loadable by `mlx_lm.load`) with random N(0, 0.02) weights.
3. Supervised warm start: completion-only cross-entropy on worked solutions
   (`solver.worked_solution`) for fresh generated tasks every batch, the prompt rendered by
   `prompts.build_prompt` exactly as the trainer renders it and the stop token <|im_end|> trained;
   AdamW. A share BARE_ANSWER of the completions answer with the bare result instead of the
   equation (`warm_start_completion`): the habit GRPO has to unlearn, since the equation reward pays
   only for equations. The bundled model is a starting point for the demo, not a solver.

Experiments (not the shipped recipe): `--search-share S` makes a share S of the completions search
traces (`countdown.traces`: 1..`--max-misses` wrong candidates, each computed and rejected against
the target, then the solution), the rare self-checking behaviour GRPO could amplify;
`--bare-share 0` drops the bare answers; `--near-misses` makes the wrong candidates the solution
with another last operation; `--sum-share S` adds a share of `traces.sum_trace` tries;
`--fixable-share F` makes F of every batch sum tries on tasks the try fixes (`traces.sum_try_fixes`);
`--flip-line` ends a fixed sum try's thought with the answer's equation (`traces.sum_trace`) and
`--subtract-last` moves the subtracted number to the end of that answer;
`--result-weight W` weighs the loss on step-line results W times (`--answer-weight` the answer's
equation) and `--opening-only` trains the thought's opening alone (up to where it stops
adding up every number: which try it makes), and `--rehearse-share R` fills R of its batches with
fixable sum tries trained on the rest alone (how the try goes on); `--init-from DIR` trains DIR's model further instead of a new one; `--probe-tasks N`
logs greedy accuracy, self-check rate and the share of wrong step lines (`selfcheck.steps`) on N
held-out tasks at each log line.

Tasks come from `generator.generate_tasks` with seeds from SFT_SEED_BASE up, disjoint from the
demo's evaluation seed, and any task of the demo's held-out set is skipped. No row of
../shared/data is ever read. What each setting gave is in scripts/README.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import supervised
from mlx.utils import tree_flatten

from mlx_grpo import distributed, modelgen
from mlx_grpo.countdown import selfcheck
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.prompts import SYSTEM_PROMPT, USER_TEMPLATE, build_prompt
from mlx_grpo.countdown.solver import worked_solution
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.countdown.traces import search_trace, sum_trace, sum_try_fixes

SFT_SEED_BASE = 1_000_000  # generator seeds of the recipe's tasks: SFT_SEED_BASE + i
TOKENIZER_TASKS = 2_000
DEFAULT_LR, DEFAULT_BATCH = 1e-3, 16  # supervised stages (scripts/grpo_vs_sft.py continues with them)
ARITH_TASKS = 20_000  # tasks whose step lines (~100k) stage 0 trains on
# Share of warm-start completions that answer with the bare result ("<answer> 98 </answer>"), as base
# models often do with this prompt. The equation reward pays nothing for them, the format reward the
# same as for an equation: the habit GRPO has to unlearn, on top of solving more tasks.
BARE_ANSWER = 0.5
SHAPE = dict(hidden_size=128, num_hidden_layers=4, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2)


@dataclass(frozen=True)
class TraceMix:
    """What the warm start's completions look like: shares of bare answers and of search traces."""

    bare: float = BARE_ANSWER  # answer with the bare target instead of the equation
    search: float = 0.0  # a search trace (`traces.search_trace`) instead of the worked solution
    max_misses: int = 2  # a search trace rejects 1..max_misses wrong candidates
    give_up: float = 0.0  # one wrong candidate, answered unchecked (a direct answer that misses)
    near: bool = False  # wrong candidates are the solution with another last operation (`traces.near_misses`)
    sum_first: float = 0.0  # add every number first, then fix the sum (`traces.sum_trace`)
    reversed_digits: bool = False  # the thought in `countdown.notation` ("440 + 910 = 360")
    # a share of every batch that is sum tries on tasks the try fixes (`traces.sum_try_fixes`), on top
    # of the mix's own (~30% of its sum tries): the retry and the flipped answer are trained on more often
    fixable: float = 0.0
    flip_line: bool = False  # sum tries write the answer's equation as their last line (`traces.sum_trace`)
    subtract_last: bool = False  # and their answers subtract h last


def tokenizer_corpus(num_tasks: int, seed: int, mix: TraceMix) -> list[str]:
    """The texts of `num_tasks` conversations cut at the special tokens, as encoding cuts them:
    role headers with the system prompt, the user prompt, the warm-start completion."""
    special = re.compile("|".join(re.escape(t) for t in modelgen.SPECIAL_TOKENS))
    texts, rng = [], random.Random(seed)
    for task in generate_tasks(num_tasks, SFT_SEED_BASE - 1 - seed):
        numbers = "[" + ", ".join(str(n) for n in task.nums) + "]"
        user = USER_TEMPLATE.format(numbers=numbers, target=task.target)
        for text in (
            "system\n" + SYSTEM_PROMPT,
            "user\n" + user,
            "assistant\n",
            warm_start_completion(task, rng, mix) or "",
        ):
            texts += [piece for piece in special.split(text) if piece]
    return texts


def train_phrase_tokenizer(corpus: list[str], vocab_size: int):
    """`modelgen.train_tokenizer` without the split at spaces: digits are still one per token, but a
    merge may span words, so the prompt's fixed sentences become a few tokens each.

    The prompt shrinks from ~150 tokens (one per word) to ~40 and a worked solution from ~50 to
    ~28 (" = " and " + " are one token each), which makes supervised and GRPO steps ~3x cheaper.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=modelgen.SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def build_untrained(
    out: Path, seed: int, shape: dict, rope_theta: float, vocab_size: int, mix: TraceMix, embed_std: float | None
) -> None:
    """Tokenizer + random-weight Qwen3 written to `out`."""
    tokenizer = train_phrase_tokenizer(tokenizer_corpus(TOKENIZER_TASKS, seed, mix), vocab_size)
    modelgen.save_tokenizer(tokenizer, out)
    config = modelgen.qwen3_config(
        vocab_size=tokenizer.get_vocab_size(),
        eos_token_id=tokenizer.token_to_id("<|im_end|>"),
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        **shape,
    )
    config["rope_theta"] = rope_theta
    modelgen.save_model(modelgen.init_qwen3(config, seed=seed, embed_std=embed_std), config, out)


def warm_start_completion(task: Task, rng: random.Random, mix: TraceMix = TraceMix()) -> str | None:
    """The solver's worked solution, or with probability `mix.search` a search trace, or with
    probability `mix.give_up` a wrong candidate answered unchecked, or with probability
    `mix.sum_first` a sum of every number, fixed when it misses; then, with probability
    `mix.bare`, its answer replaced by the bare target. None when the thought cannot be written
    in the notation asked for (a number above 999).

    Example (bare): "<think>\n44 + 19 = 63\n63 + 35 = 98\n</think>\n<answer> 98 </answer>"
    """
    kind = rng.random()
    if kind < mix.search:
        text = search_trace(
            task, rng, rng.randint(1, mix.max_misses), near=mix.near, reversed_digits=mix.reversed_digits
        )
    elif kind < mix.search + mix.give_up:
        text = search_trace(task, rng, 0, give_up=True, near=mix.near, reversed_digits=mix.reversed_digits)
    elif kind < mix.search + mix.give_up + mix.sum_first:
        text = mix_sum_trace(task, mix)
    elif mix.reversed_digits:
        text = search_trace(task, rng, 0, reversed_digits=True)
    else:
        text = worked_solution(task.nums, task.target)
    if text is None:
        return None
    if rng.random() < mix.bare:
        text = text[: text.index("<answer>")] + f"<answer> {task.target} </answer>"
    return text


def mix_sum_trace(task: Task, mix: TraceMix) -> str | None:
    """`traces.sum_trace` in the notation and answer layout `mix` asks for."""
    return sum_trace(
        task, reversed_digits=mix.reversed_digits, flip_line=mix.flip_line, subtract_last=mix.subtract_last
    )


# The result of a step line "a op b = v" (not of "v != T"), and the answer's equation.
_WEIGHTED = re.compile(r"(?<= = )(?P<result>\d+)|(?<=<answer> )(?P<answer>[^<]+?)(?= </answer>)")


def encode_example(
    tokenizer,
    task: Task,
    completion: str,
    stop_id: int,
    result_weight: float = 1.0,
    answer_weight: float = 1.0,
    window: tuple[int, int | None] = (0, None),
) -> tuple[list[int], list[float]]:
    """Prompt + completion + stop token as ids, and a loss weight per id: 0 on the prompt,
    `result_weight` on the digits of step-line results, `answer_weight` on the answer's equation,
    1 elsewhere (the completion encoded whole, each token weighted by where its characters are).
    `window` (first, end) of the completion's characters is all the loss sees: 0 outside it, and on
    the stop token unless the window runs to the end (None).

    A token that straddles the edge of a weighted span (" (" before an answer) takes its weight."""
    prompt = build_prompt(tokenizer, task)
    prompt_ids = tokenizer.encode(prompt.text, add_special_tokens=False)
    encoding = tokenizer.backend_tokenizer.encode(completion, add_special_tokens=False)
    spans = [
        (m.start(), m.end(), result_weight if m.lastgroup == "result" else answer_weight)
        for m in _WEIGHTED.finditer(completion)
    ]
    weights = [next((w for a, b, w in spans if start < b and end > a), 1.0) for start, end in encoding.offsets]
    first, end = window
    weights = [  # a token across an edge of the window is in it if it ends inside
        w if stop > first and (end is None or start < end) else 0.0
        for w, (start, stop) in zip(weights, encoding.offsets)
    ]
    stop_weight = 1.0 if end is None else 0.0
    return [*prompt_ids, *encoding.ids, stop_id], [0.0] * len(prompt_ids) + weights + [stop_weight]


def opening_end(task: Task, completion: str, mix: TraceMix) -> int:
    """Where the thought's opening ends: after its first line that is not the sum try's adding up
    of every number (the sum try's check "S != T", or the line where a worked solution or a give-up
    does something else). Trained on the opening alone, a latent stage moves how often each kind of
    trace is begun; trained on the rest alone (`--rehearse-share`), sum tries keep how they go on."""
    lines = completion.splitlines(keepends=True)
    summing = (mix_sum_trace(task, mix) or "").splitlines(keepends=True)
    summing = summing[: next((i for i, line in enumerate(summing) if "!=" in line), len(summing))]
    shared = next((i for i, (a, b) in enumerate(zip(lines, summing)) if a != b), min(len(lines), len(summing)))
    return sum(len(line) for line in lines[: shared + 1])


def make_batch(
    tokenizer,
    pairs: list[tuple[Task, str]],
    stop_id: int,
    pad_id: int,
    result_weight: float = 1.0,
    answer_weight: float = 1.0,
    windows: list[tuple[int, int | None]] | None = None,
) -> tuple[mx.array, mx.array]:
    """Right-padded ids `[B, L]` and loss weights `[B, L-1]`: 0 on the prompt and padding, 1 on the
    completion, `result_weight` on step-line results, `answer_weight` on the answer's equation, and
    0 outside each completion's loss window if `windows` are given (`encode_example`)."""
    windows = windows or [(0, None)] * len(pairs)
    examples = [
        encode_example(tokenizer, t, c, stop_id, result_weight, answer_weight, window)
        for (t, c), window in zip(pairs, windows)
    ]
    width = max(len(ids) for ids, _ in examples)
    ids = np.full((len(examples), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(examples), width - 1), dtype=np.float32)
    for row, (seq, weights) in enumerate(examples):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq) - 1] = weights[1:]  # position i predicts token i + 1
    return mx.array(ids), mx.array(mask)


def example_batches(batch_size: int, seed: int, exclude: set[Task], mix: TraceMix):
    """Fresh generated tasks forever, `batch_size` (task, warm-start completion) pairs at a time,
    no task of `exclude` among them."""
    rng = random.Random(seed)
    index = 0
    while True:
        tasks = [
            t for t in generate_tasks(batch_size, SFT_SEED_BASE + rng.randrange(10**9) + index) if t not in exclude
        ]
        index += 1
        pairs = [(t, warm_start_completion(t, rng, mix)) for t in tasks]
        if mix.fixable:
            fixed = fixable_sum_tries(
                generate_tasks(4 * batch_size, SFT_SEED_BASE + rng.randrange(10**9)), exclude, mix
            )
            keep = round(mix.fixable * len(pairs))
            pairs = fixed[:keep] + pairs[: len(pairs) - min(keep, len(fixed))]
        pairs = [(t, c) for t, c in pairs if c is not None]
        if pairs:
            yield pairs


def fixable_sum_tries(tasks: list[Task], exclude: set[Task], mix: TraceMix) -> list[tuple[Task, str]]:
    """(task, sum try) for the tasks the try fixes, none of `exclude`."""
    tries = [(t, mix_sum_trace(t, mix)) for t in tasks if sum_try_fixes(t) and t not in exclude]
    return [(t, c) for t, c in tries if c is not None]


def fixable_batches(batch_size: int, seed: int, exclude: set[Task], mix: TraceMix):
    """`batch_size` fixable sum tries on fresh generated tasks at a time, forever."""
    rng = random.Random(seed)
    while True:
        pairs = []
        while len(pairs) < batch_size:
            pairs += fixable_sum_tries(
                generate_tasks(4 * batch_size, SFT_SEED_BASE + rng.randrange(10**9)), exclude, mix
            )
        yield pairs[:batch_size]


def training_batches(
    batch_size: int, seed: int, exclude: set[Task], mix: TraceMix, opening_only: bool, rehearse: float
):
    """(pairs, loss windows) forever: `example_batches` whole, or with `opening_only` the mix's
    openings and, for a share `rehearse` of the batch, fixable sum tries after their opening."""
    if not opening_only:
        yield from ((pairs, None) for pairs in example_batches(batch_size, seed, exclude, mix))
        return
    kept = round(batch_size * rehearse)
    latent = example_batches(batch_size - kept, seed, exclude, mix)
    fixed = fixable_batches(kept, seed + 1, exclude, mix) if kept else None
    while True:
        pairs = [(t, c, (0, opening_end(t, c, mix))) for t, c in next(latent)]
        if fixed:
            pairs += [(t, c, (opening_end(t, c, mix), None)) for t, c in next(fixed)]
        yield [(t, c) for t, c, _ in pairs], [window for _, _, window in pairs]


def lr_schedule(lr: float, steps: int, warmup: int, cooldown: int):
    """Warmup-stable-decay: linear up over `warmup` steps, flat, linear down to 0 over the last `cooldown`."""
    up = optim.linear_schedule(lr / max(warmup, 1), lr, max(warmup, 1))
    down = optim.linear_schedule(lr, 0.0, max(cooldown, 1))
    flat_until = max(steps - cooldown, warmup)
    return optim.join_schedules([up, lambda _: mx.array(lr), down], [warmup, flat_until])


def supervised_warm_start(
    model,
    tokenizer,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    seed: int,
    exclude: set[Task],
    mix: TraceMix = TraceMix(),
    cooldown: int = 0,
    result_weight: float = 1.0,
    answer_weight: float = 1.0,
    opening_only: bool = False,
    rehearse: float = 0.0,
    log_every: int = 25,
    probe=None,
) -> list[dict]:
    """AdamW on the completion-only loss for `steps` batches; returns the loss log. Data-parallel
    when `mlx.launch` started ranks (`supervised.py`): every rank draws the same batches and trains
    on its rows of each; the probe runs on every rank (`evaluate` shares its tasks among them), and
    rank 0 alone prints.

    `opening_only`: the mix's completions train their opening alone (`opening_end`), and a share
    `rehearse` of every batch is sum tries on tasks the try fixes, trained on the rest alone.

    `probe(model) -> dict`, if given, is merged into each log line (e.g. a quick greedy accuracy).
    """
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    mx.random.seed(seed)
    optimizer = optim.AdamW(learning_rate=lr_schedule(lr, steps, warmup, cooldown), weight_decay=0.0)
    step_on = supervised.sft_step(model, optimizer)
    batches = training_batches(batch_size, seed, exclude, mix, opening_only, rehearse)
    log, start, cpu_start, running = [], time.time(), time.process_time(), []
    for step in range(1, steps + 1):
        pairs, windows = next(batches)
        pairs, windows = supervised.my_rows(pairs), windows and supervised.my_rows(windows)
        ids, mask = make_batch(tokenizer, pairs, stop_id, pad_id, result_weight, answer_weight, windows)
        running.append(step_on(ids, mask).item())
        if step % log_every == 0 or step == steps:
            log.append(
                {
                    "step": step,
                    "loss": float(np.mean(running)),
                    "time_s": round(time.time() - start, 1),
                    "cpu_s": round(time.process_time() - cpu_start, 1),
                }
            )
            if probe is not None:
                log[-1].update(probe(model))
            if distributed.is_main():
                print(json.dumps(log[-1]), flush=True)
            running = []
    return log


def held_out_accuracy(model, tokenizer, tasks: list[Task], max_tokens: int) -> dict:
    """Greedy `evaluate` figures, and how reliable the arithmetic is: the share of wrong step lines
    (`selfcheck.steps`) over all completions and over those that self-check."""
    from mlx_grpo.evaluate import evaluate

    samples = []
    result = evaluate(model, tokenizer, tasks, max_tokens=max_tokens, batch_size=64, samples=samples)
    checking = [s for s in samples if selfcheck.is_self_check(s["completion"], s["target"])]
    result["step_error_rate"] = _step_error_rate(samples)
    result["step_error_rate/self_checks"] = _step_error_rate(checking)
    result["self_check_accuracy"] = sum(s["correct"] for s in checking) / max(len(checking), 1)
    return result


def _step_error_rate(samples: list[dict]) -> float:
    lines = [step for s in samples for step in selfcheck.steps(s["completion"])]
    return sum(not step.correct for step in lines) / max(len(lines), 1)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="weights/countdown-tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=None, help="seed of the training tasks (default: --seed)")
    parser.add_argument("--sft-steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--cooldown", type=int, default=1000, help="last steps, lr decayed linearly to 0")
    parser.add_argument("--hidden-size", type=int, default=SHAPE["hidden_size"])
    parser.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    parser.add_argument("--ffn", type=int, default=SHAPE["intermediate_size"])
    parser.add_argument("--heads", type=int, default=SHAPE["num_attention_heads"])
    parser.add_argument("--kv-heads", type=int, default=SHAPE["num_key_value_heads"])
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--bare-share", type=float, default=BARE_ANSWER, help="completions answering the bare target")
    parser.add_argument("--search-share", type=float, default=0.0, help="completions that are search traces")
    parser.add_argument("--max-misses", type=int, default=2, help="wrong candidates a search trace rejects, at most")
    parser.add_argument("--give-up-share", type=float, default=0.0, help="completions answering a wrong candidate")
    parser.add_argument("--sum-share", type=float, default=0.0, help="completions that add every number first")
    parser.add_argument(
        "--fixable-share", type=float, default=0.0, help="share of each batch: sum tries on tasks the try fixes"
    )
    parser.add_argument("--near-misses", action="store_true", help="wrong candidates differ in the last step only")
    parser.add_argument(
        "--flip-line", action="store_true", help="sum tries write the answer's equation as their thought's last line"
    )
    parser.add_argument("--subtract-last", action="store_true", help="a fixed sum try's answer subtracts h last")
    parser.add_argument("--reversed-digits", action="store_true", help="thoughts in countdown.notation")
    parser.add_argument("--arith-steps", type=int, default=0, help="steps on single step lines first (notation)")
    parser.add_argument("--arith-batch-size", type=int, default=128)
    parser.add_argument("--arith-oversample", type=int, default=4, help="extra copies of * and / lines")
    parser.add_argument(
        "--result-weight", type=float, default=1.0, help="loss weight of step-line results (other tokens: 1)"
    )
    parser.add_argument("--answer-weight", type=float, default=1.0, help="loss weight of the answer's equation")
    parser.add_argument(
        "--opening-only",
        action="store_true",
        help="loss on the thought's opening only: up to where it stops adding up every number (which try it makes)",
    )
    parser.add_argument(
        "--rehearse-share",
        type=float,
        default=0.0,
        help="with --opening-only: share of each batch, fixable sum tries trained after their opening",
    )
    parser.add_argument("--embed-std", type=float, default=None, help="std of the embedding at init (default 0.02)")
    parser.add_argument("--max-tokens", type=int, default=None, help="evaluation budget (default: the demo's)")
    parser.add_argument("--rope-theta", type=float, default=10_000.0)
    parser.add_argument("--eval-tasks", type=int, default=1000, help="held-out tasks scored at the end (0: none)")
    parser.add_argument("--eval-seed", type=int, default=None, help="default: the demo's evaluation seed")
    parser.add_argument(
        "--probe-tasks", type=int, default=0, help="greedy accuracy on N held-out tasks at each log line"
    )
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--init-from", default=None, help="train this model further instead of a new one")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def trace_mix(args: argparse.Namespace) -> TraceMix:
    """The completions' mix the command line asks for."""
    return TraceMix(
        bare=args.bare_share,
        search=args.search_share,
        max_misses=args.max_misses,
        give_up=args.give_up_share,
        near=args.near_misses,
        sum_first=args.sum_share,
        reversed_digits=args.reversed_digits,
        fixable=args.fixable_share,
        flip_line=args.flip_line,
        subtract_last=args.subtract_last,
    )


def mix_arguments(mix: TraceMix) -> list[str]:
    """The command-line arguments that ask for `mix` (`trace_mix` reads them back)."""
    flags = (
        ["--near-misses"] * mix.near
        + ["--reversed-digits"] * mix.reversed_digits
        + ["--flip-line"] * mix.flip_line
        + ["--subtract-last"] * mix.subtract_last
    )
    shares = {"--bare-share": mix.bare, "--search-share": mix.search, "--give-up-share": mix.give_up}
    shares |= {"--sum-share": mix.sum_first, "--max-misses": mix.max_misses, "--fixable-share": mix.fixable}
    return [*flags, *(str(part) for item in shares.items() for part in item)]


def main(argv=None) -> None:
    args = argument_parser().parse_args(argv)

    import mlx_lm

    from mlx_grpo.demo import EVAL_SEED, MAX_TOKENS, held_out_tasks

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to rebuild it")
    supervised.barrier()  # every rank has looked before rank 0 writes
    shape = dict(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        intermediate_size=args.ffn,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
    )
    mix = trace_mix(args)
    max_tokens = args.max_tokens or MAX_TOKENS
    start = time.time()
    if distributed.is_main():
        shutil.rmtree(out, ignore_errors=True)
        if args.init_from:  # a second stage: the given model's tokenizer and weights, trained on
            shutil.copytree(args.init_from, out, ignore=shutil.ignore_patterns("*.md", "*.yaml"))
        else:
            build_untrained(out, args.seed, shape, args.rope_theta, args.vocab_size, mix, args.embed_std)
    supervised.barrier()
    model, tokenizer = mlx_lm.load(str(out))
    exclude = set(held_out_tasks(EVAL_SEED))
    if args.arith_steps:  # stage 0: the arithmetic of one step line, ~7x cheaper per line than in a trace
        import arith_format

        arith = arith_format.oversampled(
            arith_format.step_lines(ARITH_TASKS, SFT_SEED_BASE // 2, exclude), args.arith_oversample
        )
        arith_test = arith_format.step_lines(300, SFT_SEED_BASE // 2 - 1, exclude)
        restated = (  # (train, test) restatement lines, for thoughts that begin with one
            [
                arith_format.restatements(n, seed, exclude)
                for n, seed in ((ARITH_TASKS, SFT_SEED_BASE // 3), (300, SFT_SEED_BASE // 3 - 1))
            ]
            if mix.reversed_digits
            else ((), ())
        )
        arith_log = arith_format.train_lines(
            model,
            tokenizer,
            arith,
            arith_test,
            steps=args.arith_steps,
            batch_size=args.arith_batch_size,
            lr=args.lr,
            seed=args.seed,
            eval_every=250,
            written_too=restated,
            log=lambda text: print(text, flush=True),
        )
    probe = None
    if args.probe_tasks:
        probe_tasks = held_out_tasks(EVAL_SEED)[: args.probe_tasks]

        def probe(m) -> dict:
            figures = held_out_accuracy(m, tokenizer, probe_tasks, max_tokens)
            if mix.reversed_digits:  # the first step line teacher-forced, alone and where a trace puts it
                import arith_in_context

                figures |= {f"step exact {k}": v for k, v in arith_in_context.exact_rates(m, tokenizer).items()}
            return {f"probe/{k}": v for k, v in figures.items()}

    log = supervised_warm_start(
        model,
        tokenizer,
        steps=args.sft_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        cooldown=args.cooldown,
        result_weight=args.result_weight,
        answer_weight=args.answer_weight,
        opening_only=args.opening_only,
        rehearse=args.rehearse_share,
        seed=args.seed if args.data_seed is None else args.data_seed,
        exclude=exclude,
        mix=mix,
        log_every=args.log_every,
        probe=probe,
    )
    if distributed.is_main():
        modelgen.save_model(model, json.loads((out / "config.json").read_text()), out)
    built_s = time.time() - start
    result = {
        "seed": args.seed,
        "sft_steps": args.sft_steps,
        "build_s": round(built_s, 1),
        "params": sum(v.size for _, v in tree_flatten(model.parameters())),
        "final_loss": log[-1]["loss"],
    }
    if args.arith_steps:
        result["arith"] = arith_log
    if args.eval_tasks:
        tasks = held_out_tasks(args.eval_seed if args.eval_seed is not None else EVAL_SEED)[: args.eval_tasks]
        result.update(held_out_accuracy(model, tokenizer, tasks, max_tokens))  # every rank scores a share
    if distributed.is_main():
        print(json.dumps(result))


if __name__ == "__main__":
    from mlx_grpo.blas import maybe_reexec_with_openblas

    maybe_reexec_with_openblas()  # as the CLI does: OpenBLAS on a Linux CPU, the speed the figures were measured at
    supervised.one_blas_thread_per_rank()
    main()
