"""The bundled tiny model (weights/countdown-tiny) and the offline demo built on it."""

from __future__ import annotations

import json
import re

import pytest

from mlx_grpo.countdown.selfcheck import is_self_check
from mlx_grpo.demo import BUNDLED_MODEL, EVAL_SEED, held_out_tasks

pytestmark = pytest.mark.skipif(
    not (BUNDLED_MODEL / "model.safetensors").is_file(), reason="bundled model not built (scripts/build_tiny_model.py)"
)


@pytest.fixture(scope="module")
def bundled():
    import mlx_lm

    return mlx_lm.load(str(BUNDLED_MODEL))


def test_folder_is_a_small_offline_qwen3(bundled, monkeypatch):
    config = json.loads((BUNDLED_MODEL / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    size = sum(f.stat().st_size for f in BUNDLED_MODEL.iterdir())
    assert size < 8 * 2**20, "the committed folder should stay a few MB"
    model, _ = bundled
    assert model.model_type == "qwen3"


def test_tokenizer_splits_digits_and_has_chat_tokens(bundled):
    _, tokenizer = bundled
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode("98 = 44 + 54", add_special_tokens=False))
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == list("984454")
    for special in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert tokenizer.encode(special, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(special)]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in tokenizer.eos_token_ids
    messages = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_preset_parses_into_the_train_config():
    from mlx_grpo.config import build_config
    from mlx_grpo.presets import preset_for_model

    preset = preset_for_model(str(BUNDLED_MODEL))
    config = build_config(None, {"output_dir": "unused"}, base=preset)
    assert config.model == str(BUNDLED_MODEL)
    assert config.dataset == "generate"
    assert config.max_steps * config.batch_size <= config.num_samples * (1 - config.test_size) * 4


def test_it_solves_few_held_out_tasks_greedily_and_rarely_self_checks(bundled):
    from mlx_grpo.evaluate import evaluate
    from mlx_grpo.presets import preset_for_model

    model, tokenizer = bundled
    samples = []
    budget = preset_for_model(str(BUNDLED_MODEL))["max_completion_length"]  # what the demo gives it
    tasks = held_out_tasks(EVAL_SEED, 96)
    result = evaluate(model, tokenizer, tasks, max_tokens=budget, batch_size=96, samples=samples)
    assert result["format_rate"] > 0.9
    # the warm start the demo needs: it solves a few tasks, and the self-check is there but rare
    # (measured: 4 of 96 solved, 15 of 96 self-checking)
    assert 0 < result["accuracy"] < 0.12
    assert 0.03 < result["self_check_rate"] < 0.35

    # equation rate, recounted from the answers: an arithmetic expression (operators present, no
    # division by zero) that uses the numbers exactly once
    def is_equation(completion: str, nums: list[int]) -> bool:
        answer = re.search(r"<answer>([\d\s()+\-*/]*[-+*/][\d\s()+\-*/]*)</answer>", completion)
        if answer is None or sorted(map(int, re.findall(r"\d+", answer.group(1)))) != sorted(nums):
            return False
        try:
            eval(answer.group(1))  # digits, spaces, brackets and operators only (the regex above)
        except (ZeroDivisionError, SyntaxError):  # unbalanced brackets, leading zeros
            return False
        return True

    equations = [is_equation(s["completion"], s["nums"]) for s in samples]
    assert result["equation_rate"] == sum(equations) / len(samples)
    assert result["accuracy"] <= result["equation_rate"]
    checks = [is_self_check(s["completion"], s["target"]) for s in samples]
    assert result["self_check_rate"] == sum(checks) / len(samples)


def test_quick_demo_end_to_end_and_no_clobbering(tmp_path, capsys):
    from mlx_grpo.cli import main

    run_dir = tmp_path / "demo"
    args = ["demo", "--quick", "--quiet", "--output-dir", str(run_dir), "--real-rows", str(tmp_path / "absent.jsonl")]
    main(args)
    out = capsys.readouterr().out
    assert "accuracy" in out and "->" in out
    result = json.loads((run_dir / "demo.json").read_text())
    assert set(result["before"]) == set(result["after"]) and len(result["before"]) == 1
    assert (run_dir / "plots" / "reward_accuracy.png").is_file()
    assert (run_dir / "adapters.safetensors").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


def test_shipped_tokenizer_files_agree_and_the_weights_are_the_measured_ones():
    import hashlib

    from test_modelgen import _special_flags

    backend, config = _special_flags(BUNDLED_MODEL)
    assert backend == config and not backend["<think>"] and not backend["</think>"] and backend["<|im_end|>"]
    # The README's demo figures were measured with these weights; retraining them changes this hash.
    digest = hashlib.sha256((BUNDLED_MODEL / "model.safetensors").read_bytes()).hexdigest()
    assert digest == "08c45629fede1e69fcbabb71c286b006d028ea90a1144e031f445d03e09dcf74"
