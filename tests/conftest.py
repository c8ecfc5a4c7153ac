"""Shared fixtures: a tiny random Qwen3 model with its own ChatML tokenizer, built in a temp dir.

Building takes ~30 ms; `mlx_lm.load` reads it offline like any Hugging Face folder.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

_CORPUS = [
    "You are a math expert. You will first reason carefully about the problem, then provide the user with the answer.",
    "Given the numbers [44, 19, 35] and the target number 98, please provide a solution to reach the target number "
    "using the four basic arithmetic operations: addition, subtraction, multiplication, and division (+, -, *, /). "
    "You can use each number only once. Show your work in <think> </think> tags. And return the final equation and "
    "answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 = 1 </answer>.",
    "<think>\n44 + 19 = 63\n63 + 35 = 98\n</think>\n<answer> (44 + 19) + 35 </answer>",
    "<think>\n76 - 47 = 29\n29 * 2 = 58\n58 / 2 = 29\n</think>\n<answer> ((76 - 47) * 2) / 2 </answer>",
    "Let me solve this step by step. Wait, let me check: that is not right, try again instead.",
]


def build_tiny(path: Path, seed: int = 0, **shape) -> Path:
    from mlx_grpo.modelgen import build_tiny_model

    shape = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **shape,
    }
    # embed_std 0.1: logits can move far enough from uniform for RL tests to see learning.
    return build_tiny_model(path, _CORPUS * 4, seed=seed, vocab_size=320, embed_std=0.1, **shape)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """Path of a tiny Qwen3 (2 layers x 64, vocab ~320, random weights) + tokenizer. Read-only: copy to modify."""
    return build_tiny(tmp_path_factory.mktemp("tiny-qwen3") / "model")


SPACES_REWARD = "def spaces(completions, **kw):\n    return [c.count(' ') / max(len(c), 1) for c in completions]\n"


@pytest.fixture(scope="session")
def spaces_reward(tmp_path_factory) -> str:
    """A reward spec (`file.py:spaces`) that a random model's samples already vary on: the share of
    spaces in the text (the fraction of tokens that start a word, in a byte-level BPE), so updates are
    non-zero."""
    path = tmp_path_factory.mktemp("reward") / "spaces.py"
    path.write_text(SPACES_REWARD)
    return f"{path}:spaces"


def tiny_run_settings(model_path, out, **overrides) -> dict:
    """`TrainConfig` settings for a short run of the tiny test model on generated tasks, sampling from
    the full distribution (the defaults are Qwen3's top-k/top-p)."""
    settings = dict(
        model=str(model_path),
        dataset="generate",
        num_samples=40,
        test_size=0.2,
        batch_size=2,
        num_generations=4,
        max_completion_length=12,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_steps=3,
        learning_rate=5e-3,
        output_dir=str(out),
        eval_every=0,
        seed=3,
    )
    return {**settings, **overrides}


@pytest.fixture
def tiny_model(tiny_model_path):
    """A fresh (model, tokenizer) pair loaded with mlx_lm.load from the tiny model's folder."""
    import mlx_lm

    return mlx_lm.load(str(tiny_model_path))


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer, chat template and Qwen3-0.6B config.json (../shared/data/qwen3_tokenizer)."""
    path = SHARED_DATA / "qwen3_tokenizer"
    if not (path / "tokenizer_config.json").is_file():
        pytest.skip(f"real Qwen3 tokenizer files not found at {path}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real Countdown rows and reference solutions (evaluation data only)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def offline_hf_home(tmp_path_factory, qwen3_tokenizer_dir, shared_data) -> Path:
    """An HF_HOME where, offline, `Qwen/Qwen3-0.6B` is a tiny random Qwen3 with the real tokenizer and
    `Jiayi-Pan/Countdown-Tasks-3to4` holds the real sample rows (layout: tests/hf_cache.py)."""
    from hf_cache import cache_countdown, cache_tiny_qwen3

    home = tmp_path_factory.mktemp("hf-home")
    cache_tiny_qwen3(home, qwen3_tokenizer_dir)
    cache_countdown(home, [json.loads(line) for line in (shared_data / "countdown_real_sample.jsonl").open()])
    return home


@pytest.fixture
def cli(monkeypatch, capfd):
    """Run `mlx-grpo ARGS` through the real entry point (its error handling included); each call
    returns (exit code, stdout, stderr)."""
    from mlx_grpo.cli import main

    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a reward file a run imports leaves no __pycache__

    def invoke(*args):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capfd.readouterr()
        return code, out, err

    return invoke
