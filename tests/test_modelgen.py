import json

import mlx.core as mx
import mlx_lm


def test_tiny_model_loads_with_mlx_lm_and_has_chatml_template(tiny_model_path):
    config = json.loads((tiny_model_path / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    model, tokenizer = mlx_lm.load(str(tiny_model_path))
    messages = [{"role": "user", "content": "hi"}]
    on = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    off = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert on == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1
    assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # digits are split one per token, as in Qwen's tokenizer
    assert len(tokenizer.encode("44", add_special_tokens=False)) == 2
    ids = tokenizer.encode("<think>44 + 19</think>", add_special_tokens=False)
    assert tokenizer.decode(ids) == "<think>44 + 19</think>"
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), config["vocab_size"])


def _special_flags(folder) -> tuple[dict, dict]:
    """(tokenizer.json's, tokenizer_config.json's) special flag of each added token, by content."""
    backend = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    config = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"].values()
    return {t["content"]: t["special"] for t in backend}, {t["content"]: t["special"] for t in config}


def test_both_tokenizer_files_mark_the_same_tokens_special_as_qwen3_does(tiny_model_path):
    backend, config = _special_flags(tiny_model_path)
    assert backend == config
    assert [t for t, special in backend.items() if special] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    _, tokenizer = mlx_lm.load(str(tiny_model_path))
    ids = tokenizer.encode("<|im_start|><think>44 + 19</think><|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>44 + 19</think>"
