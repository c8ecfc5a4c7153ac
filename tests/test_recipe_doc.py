"""docs/recipe.md's defaults table and its measured facts stay true: every field it names is a
TrainConfig field (or one it marks new), the lengths add up, and the token counts it quotes are
what the real Qwen3 tokenizer and chat template give."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlx_grpo.config import TrainConfig
from mlx_grpo.countdown.prompts import build_prompt
from mlx_grpo.countdown.tasks import Task

RECIPE = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"
NEW_FIELDS = {"max_thinking_tokens", "thinking_stop_text", "max_answer_tokens"}
# Qwen3 docs, quickstart "Thinking Budget" (QwenLM/Qwen3 docs/source/getting_started/quickstart.md).
QWEN_EARLY_STOP = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the thinking directly now."
    "\n</think>\n\n"
)


def defaults_table() -> dict[str, str]:
    """field -> proposed value (the cell's text) for every row of the 'Proposed defaults' table."""
    section = RECIPE.read_text().split("## Proposed defaults", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    return {name: cells[2] for cells in rows for name in re.findall(r"`(\w+)`", cells[0])}


def proposed(table: dict[str, str], name: str):
    return json.loads(re.fullmatch(r"`(.*)`", table[name]).group(1))


def test_every_field_in_the_table_is_a_config_field_or_marked_new():
    table = defaults_table()
    section = RECIPE.read_text().split("## Proposed defaults", 1)[1]
    marked_new = set(re.findall(r"\| `(\w+)` \*\*new\*\*", section))
    assert marked_new == NEW_FIELDS
    assert set(table) - NEW_FIELDS <= set(TrainConfig.__dataclass_fields__)


def test_the_row_length_adds_up_and_the_stop_text_is_qwens(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    table = defaults_table()
    stop = proposed(table, "thinking_stop_text")
    assert stop == QWEN_EARLY_STOP and json.dumps(QWEN_EARLY_STOP) in RECIPE.read_text()  # the code block too
    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir))
    ids = tokenizer.encode(stop, add_special_tokens=False)
    assert len(ids) == 24 and ids[-2:] == tokenizer.convert_tokens_to_ids(["</think>", "ĊĊ"])  # "\n\n" is one token
    total = proposed(table, "max_thinking_tokens") + len(ids) + proposed(table, "max_answer_tokens")
    assert proposed(table, "max_completion_length") == total == 1176


@pytest.mark.slow
def test_prompt_lengths_are_the_ones_the_memory_line_quotes(qwen3_tokenizer_dir, shared_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir))
    rows = [json.loads(line) for line in (shared_data / "countdown_real_sample.jsonl").open()]
    lengths = {
        len(tokenizer.encode(build_prompt(tokenizer, Task(r["target"], tuple(r["nums"])), prefill="<think>\n").text))
        for r in rows
    }
    assert (min(lengths), max(lengths)) == (142, 150)
    assert "32 rows × 1,326 positions" in RECIPE.read_text()  # 150 + 1,176
