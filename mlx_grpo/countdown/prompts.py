"""The Countdown prompt: the original notebook's system and user texts, rendered with the chat template.

Two fixes over the original: the prompt ends with the assistant generation header
(`add_generation_prompt=True`), so the model answers instead of continuing the user's turn; and
the example answer it shows, `(1 + 2) / 3 = 1`, is accepted by the equation reward (a trailing
`= N` is allowed when true), so a model that copies the prompt's form is not punished.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_grpo.countdown.tasks import Task
from mlx_grpo.errors import UserError

SYSTEM_PROMPT = (
    "You are a math expert. You will first reason carefully about the problem, then provide the user with the answer."
)
USER_TEMPLATE = (
    "Given the numbers {numbers} and the target number {target}, please provide a solution to reach the target "
    "number using the four basic arithmetic operations: addition, subtraction, multiplication, and division "
    "(+, -, *, /). You can use each number only once. Show your work in <think> </think> tags. And return the "
    "final equation and answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 = 1 </answer>."
)


@dataclass(frozen=True)
class Prompt:
    text: str  # the full rendered prompt, generation header and prefill included
    assistant_prefix: str  # the assistant turn's text already in `text` (empty think block + prefill)


def build_messages(task: Task) -> list[dict]:
    """System and user messages for a task, e.g. numbers rendered as "[44, 19, 35]"."""
    numbers = "[" + ", ".join(str(n) for n in task.nums) + "]"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(numbers=numbers, target=task.target)},
    ]


def build_prompt(tokenizer, task: Task, *, enable_thinking: bool = True, prefill: str = "") -> Prompt:
    """Render a task with the tokenizer's chat template, generation header included, then the prefill.

    Args:
        tokenizer: a Hugging Face tokenizer or mlx-lm TokenizerWrapper with a chat template.
        task: the Countdown task.
        enable_thinking: Qwen3's switch; when False its template writes an empty
            `<think>\\n\\n</think>\\n\\n` after the header, which becomes part of `assistant_prefix`.
        prefill: text the assistant turn starts with (e.g. "<think>"), appended after the header.
    Returns:
        Prompt(text, assistant_prefix): with the real Qwen3 template and thinking on, `text` ends
        "<|im_start|>assistant\\n" + prefill and `assistant_prefix` is just the prefill.
    """
    messages = build_messages(task)
    text = _render(tokenizer, messages, True, enable_thinking)
    conversation = _render(tokenizer, messages, False, enable_thinking)
    if not text.startswith(conversation):
        raise UserError("the chat template renders the conversation differently with and without the generation prompt")
    # What the template adds after the conversation: the header, then (Qwen3 style) a think block.
    generation = text[len(conversation) :]
    think = generation.find("<think>")
    template_prefix = generation[think:] if think >= 0 else ""
    return Prompt(text + prefill, template_prefix + prefill)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool, enable_thinking: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False, enable_thinking=enable_thinking
    )
