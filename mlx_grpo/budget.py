"""The thinking budget: Qwen3's budgeted thinking, done per row inside the batched decode step.

Qwen's documented method (docs/recipe.md, [S1]): a row still inside its think block after
`max_thinking_tokens` gets an early-stop text appended that ends in `</think>` (Qwen's own:
"\\n\\nConsidering the limited time by the user, I have to give the solution based on the thinking
directly now.\\n</think>\\n\\n"), and then continues with its answer. Qwen runs two generate calls;
here all rows are decoded together and reach the budget at different steps, so each row carries a
phase that the compiled step advances with `mx.where` (no shape changes, no host round trip):

    THINKING -> forcing k = 0 .. K-1 (the stop text's k-th token replaces the sample) -> ANSWERING (K)
             -> CAPPED once `max_answer_tokens` were written after the close (the row stops, truncated)

A row that samples `</think>` itself goes from THINKING straight to ANSWERING; its answer budget
starts after its own `</think>`, a forced row's after the whole stop text. Tokens are counted from
the completion's first one: with the `<think>\\n` prefill every one of them is thought.

The forced tokens are the prompt's, not the model's. They stay in `Rollout.tokens`, so the update
feeds them as inputs and scores the tokens after them conditioned on them exactly as sampled, but
their loss mask is 0 and their log-prob 0 (`Rollout.forced` marks them).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from mlx_grpo.errors import UserError

THINK_END = "</think>"
THINKING = -1  # phase: inside the think block, nothing forced yet
CAPPED = -2  # phase: the answer budget is spent; the row generates nothing more


@dataclass(frozen=True)
class ThinkingBudget:
    """A thinking budget in token ids.

    max_thinking_tokens: tokens a row may write inside its think block before the stop text is forced.
    stop_ids: the early-stop text's tokens (K of them); they include `think_end_id`.
    think_end_id: the single token `</think>`, whose sampling closes the think block.
    max_answer_tokens: the most tokens after the close (None: only the overall cap).
    """

    max_thinking_tokens: int
    stop_ids: tuple[int, ...]
    think_end_id: int
    max_answer_tokens: int | None = None

    def __post_init__(self):
        if self.max_thinking_tokens < 1 or (self.max_answer_tokens is not None and self.max_answer_tokens < 1):
            raise ValueError(f"budgets must be >= 1, got {self.max_thinking_tokens}, {self.max_answer_tokens}")
        if self.think_end_id not in self.stop_ids:
            raise ValueError(f"the stop text {self.stop_ids} does not close the think block ({self.think_end_id})")

    @classmethod
    def of_config(cls, config, tokenizer) -> ThinkingBudget | None:
        """The budget a `TrainConfig` asks for, in `tokenizer`'s ids; None when it is off or can never bite
        (max_thinking_tokens 0, or not below max_completion_length).

        Raises:
            UserError: the tokenizer has no single `</think>` token, the stop text does not contain it,
                or max_completion_length leaves no room for the stop text and one answer token.
        """
        budget, cap = config.max_thinking_tokens, config.max_completion_length
        if budget == 0 or budget >= cap:
            return None
        think_end = tokenizer.encode(THINK_END, add_special_tokens=False)
        if len(think_end) != 1:
            raise UserError(
                f"invalid config: the thinking budget needs {THINK_END} to be one token of the tokenizer "
                f"(it is {len(think_end)}); set max_thinking_tokens to 0"
            )
        stop_ids = tuple(tokenizer.encode(config.thinking_stop_text, add_special_tokens=False))
        if think_end[0] not in stop_ids:
            raise UserError(f"invalid config: thinking_stop_text must contain {THINK_END}")
        if budget + len(stop_ids) >= cap:
            raise UserError(
                f"invalid config: max_completion_length ({cap}) must exceed max_thinking_tokens ({budget}) plus "
                f"the {len(stop_ids)} tokens of thinking_stop_text"
            )
        return cls(budget, stop_ids, think_end[0], config.max_answer_tokens)

    def limits(self, max_tokens: int) -> tuple[mx.array, mx.array, mx.array, mx.array]:
        """The arrays `advance` reads: `(stop_ids [K], think_end [], max_thinking [], max_answer [])`."""
        answer = max_tokens if self.max_answer_tokens is None else self.max_answer_tokens
        ints = (self.think_end_id, self.max_thinking_tokens, answer)
        return (mx.array(self.stop_ids, mx.int32), *(mx.array(x, mx.int32) for x in ints))


def no_limits() -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """Placeholder `limits` for a decoder without a budget (it never reads them)."""
    return (mx.zeros((1,), mx.int32), *(mx.array(0, mx.int32) for _ in range(3)))


def initial_state(rows: int) -> tuple[mx.array, mx.array]:
    """`(phase [R], answer_left [R])` of rows that start inside their think block."""
    return mx.full((rows,), THINKING, mx.int32), mx.zeros((rows,), mx.int32)


def advance(sampled, logps, lengths, phase, answer_left, limits):
    """One decode step of the budget, for rows that are still generating (the caller masks the rest).

    Args:
        sampled: `[R]` int32 tokens drawn from the model; logps `[R]` their log-probs.
        lengths: `[R]` tokens each row wrote before this one.
        phase, answer_left: `[R]` int32 budget state (`initial_state`).
        limits: `ThinkingBudget.limits`.

    Returns:
        `(tokens [R], logps [R], forced [R] bool, phase [R], answer_left [R])`: forced rows get the stop
        text's next token and log-prob 0.
    """
    stop_ids, think_end, max_thinking, max_answer = limits
    K = stop_ids.shape[0]
    forced = (phase >= 0) & (phase < K)  # [R]; phase K is answering
    tokens = mx.where(forced, stop_ids[mx.clip(phase, 0, K - 1)], sampled)
    logps = mx.where(forced, 0.0, logps)
    closes = mx.where(forced, phase == K - 1, (phase == THINKING) & (sampled == think_end))  # [R]
    answer_left = mx.where(closes, max_answer, answer_left - (phase == K).astype(mx.int32))
    phase = mx.where(forced, phase + 1, mx.where(closes, K, phase))
    spent = (phase == THINKING) & (lengths + 1 >= max_thinking)  # still thinking at the budget: force next
    phase = mx.where(spent, 0, phase)
    phase = mx.where((phase == K) & (answer_left <= 0), CAPPED, phase)
    return tokens, logps, forced, phase, answer_left
