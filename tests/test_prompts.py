"""Countdown prompts rendered with the real Qwen3 chat template and the tiny test tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from mlx_grpo.countdown.expr import check_equation, extract_equation
from mlx_grpo.countdown.prompts import SYSTEM_PROMPT, USER_TEMPLATE, Prompt, build_messages, build_prompt
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.rewards import equation_reward_func, format_reward_func

TASK = Task(target=98, nums=(44, 19, 35))
THOUGHT = "\n44 + 19 = 63\n63 + 35 = 98\n"
ANSWER = "<answer> (44 + 19) + 35 </answer>"
IM_START, ASSISTANT, NEWLINE, THINK, THINK_END, TWO_NEWLINES = 151644, 77091, 198, 151667, 151668, 271


@pytest.fixture(scope="module")
def qwen3(qwen3_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir))


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(str(tiny_model_path))


def _rewards(prompt: Prompt, completion: str, task: Task = TASK) -> tuple[float, float]:
    fmt = format_reward_func([completion], assistant_prefixes=[prompt.assistant_prefix])[0]
    return fmt, equation_reward_func([completion], [task.target], [list(task.nums)])[0]


def test_messages_are_the_original_texts_verbatim():
    system, user = build_messages(TASK)
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert SYSTEM_PROMPT == (
        "You are a math expert. You will first reason carefully about the problem, "
        "then provide the user with the answer."
    )
    assert user["role"] == "user"
    assert user["content"] == (
        "Given the numbers [44, 19, 35] and the target number 98, please provide a solution to reach the target number "
        "using the four basic arithmetic operations: addition, subtraction, multiplication, and division (+, -, *, /). "
        "You can use each number only once. Show your work in <think> </think> tags. And return the final equation and "
        "answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 = 1 </answer>."
    )


def test_the_prompts_own_example_answer_is_accepted():
    example = extract_equation(USER_TEMPLATE[USER_TEMPLATE.rindex("<answer>") :])  # the last tag is the example
    assert example == "(1 + 2) / 3 = 1"
    assert check_equation(example, [1, 2, 3], 1)
    completion = f"<think>\n1 + 2 = 3\n3 / 3 = 1\n</think>\n<answer> {example} </answer>"
    assert _rewards(Prompt("", ""), completion, Task(1, (1, 2, 3))) == (1.0, 1.0)


def test_qwen3_thinking_on(qwen3):
    prompt = build_prompt(qwen3, TASK, enable_thinking=True)
    ids = qwen3.encode(prompt.text, add_special_tokens=False)
    assert len(ids) == 143
    assert ids[-3:] == [IM_START, ASSISTANT, NEWLINE]
    assert prompt.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.assistant_prefix == ""
    assert _rewards(prompt, f"<think>{THOUGHT}</think>\n{ANSWER}") == (1.0, 1.0)
    assert _rewards(prompt, ANSWER) == (0.0, 1.0)  # no thinking where thinking was asked for


def test_qwen3_thinking_off(qwen3):
    prompt = build_prompt(qwen3, TASK, enable_thinking=False)
    ids = qwen3.encode(prompt.text, add_special_tokens=False)
    assert len(ids) == 147
    assert ids[-7:] == [IM_START, ASSISTANT, NEWLINE, THINK, TWO_NEWLINES, THINK_END, TWO_NEWLINES]
    assert prompt.assistant_prefix == "<think>\n\n</think>\n\n"
    assert _rewards(prompt, ANSWER) == (1.0, 1.0)
    assert _rewards(prompt, f"<think>{THOUGHT}</think>\n{ANSWER}") == (0.0, 1.0)  # a second think block


def test_qwen3_with_a_think_prefill(qwen3):
    prompt = build_prompt(qwen3, TASK, enable_thinking=True, prefill="<think>")
    assert prompt.text.endswith("<|im_start|>assistant\n<think>")
    assert prompt.assistant_prefix == "<think>"
    assert qwen3.encode(prompt.text, add_special_tokens=False)[-4:] == [IM_START, ASSISTANT, NEWLINE, THINK]
    assert _rewards(prompt, f"{THOUGHT}</think>\n{ANSWER}") == (1.0, 1.0)
    assert _rewards(prompt, f"<think>{THOUGHT}</think>\n</think>\n{ANSWER}") == (0.0, 1.0)


def test_qwen3_with_the_originals_prefill(qwen3):
    prompt = build_prompt(qwen3, TASK, prefill="Let me solve this step by step.\n<think>")
    assert prompt.assistant_prefix == "Let me solve this step by step.\n<think>"
    assert _rewards(prompt, f"{THOUGHT}</think>\n{ANSWER}") == (1.0, 1.0)


def test_qwen3_through_mlx_lms_tokenizer_wrapper(qwen3_tokenizer_dir, qwen3):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    wrapper = load_tokenizer(qwen3_tokenizer_dir)
    for thinking in (True, False):
        expected = build_prompt(qwen3, TASK, enable_thinking=thinking)
        assert build_prompt(wrapper, TASK, enable_thinking=thinking) == expected


@pytest.mark.parametrize(
    "thinking, prefill, prefix, completion",
    [
        (True, "<think>", "<think>", f"{THOUGHT}</think>\n{ANSWER}"),
        (False, "", "<think>\n\n</think>\n\n", ANSWER),
    ],
)
def test_tiny_fixture_tokenizer(tiny_tokenizer, thinking, prefill, prefix, completion):
    prompt = build_prompt(tiny_tokenizer, TASK, enable_thinking=thinking, prefill=prefill)
    assert prompt.text.startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n")
    assert prompt.text.endswith("<|im_start|>assistant\n" + prefix)
    assert prompt.assistant_prefix == prefix
    assert _rewards(prompt, completion) == (1.0, 1.0)


def test_a_template_without_a_think_block_gives_only_the_prefill(tiny_tokenizer):
    plain = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    plain.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert build_prompt(plain, TASK, enable_thinking=False).assistant_prefix == ""
    prompt = build_prompt(plain, TASK, enable_thinking=False, prefill="<think>")
    assert prompt.assistant_prefix == "<think>" and prompt.text.endswith("assistant\n<think>")
