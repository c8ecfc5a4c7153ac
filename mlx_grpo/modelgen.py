"""Build Qwen3-architecture models and small tokenizers from scratch, in the Hugging Face layout.

Used by the test fixtures, the benchmark (random weights in Qwen3-0.6B's shape) and the recipe
that builds the bundled tiny model. Everything here is offline and seeded; `mlx_lm.load(path)`
loads the result with no custom code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def is_special(token: str) -> bool:
    """Whether decoding with `skip_special_tokens=True` drops `token`: the ChatML control tokens do;
    <think> and </think> are text, as in Qwen3's own tokenizer, so the reasoning tags survive."""
    return token.startswith("<|")


# ChatML with Qwen3's thinking switch: with enable_thinking=false the generation header carries an
# empty think block, as Qwen3's own template does; otherwise the model opens <think> itself.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def qwen3_config(
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    intermediate_size: int = 128,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int | None = None,
    vocab_size: int = 512,
    tie_word_embeddings: bool = True,
    max_position_embeddings: int = 4096,
    eos_token_id: int | list = 2,
    bos_token_id: int = 0,
) -> dict:
    """A Hugging Face `config.json` dict for a Qwen3 model of the given shape."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "intermediate_size": intermediate_size,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "head_dim": head_dim or hidden_size // num_attention_heads,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tie_word_embeddings,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }


def init_qwen3(config: dict, seed: int = 0, std: float = 0.02, embed_std: float | None = None):
    """A Qwen3 `mlx_lm` model with N(0, std) weights (norms at 1), as Hugging Face initialises.

    `embed_std` sets the embedding's own std. With tied embeddings and a final RMSNorm, the logits
    can be at most |h|·|e| ≈ sqrt(hidden)·embed_std·sqrt(hidden), so a tiny model at 0.02 is stuck
    near the uniform distribution whatever LoRA does; tests that must see learning use ~0.1.
    """
    from mlx_lm.models import qwen3

    mx.random.seed(seed)
    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    params = tree_map(lambda p: mx.ones_like(p) if p.ndim == 1 else std * mx.random.normal(p.shape), model.parameters())
    if embed_std is not None:
        embed = params["model"]["embed_tokens"]
        embed["weight"] = embed_std * mx.random.normal(embed["weight"].shape)
    model.update(params)
    mx.eval(model.parameters())
    return model


def save_model(model, config: dict, path: str | Path) -> Path:
    """Write `config.json` and `model.safetensors` (float32) into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE whose pre-tokenizer splits digits one per token (as Qwen's does).

    Special tokens take ids 0..4 in SPECIAL_TOKENS order.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer, path: str | Path, model_max_length: int = 4096) -> Path:
    """Write `tokenizer.json` and a `tokenizer_config.json` with the ChatML template.

    Both files mark the same tokens special (`is_special`): the trainer's `special_tokens` makes all
    five special in `tokenizer.json`, while transformers re-saves (a fused model) from the config's
    `added_tokens_decoder`, so two different flags would decode base and fused models differently.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    data = json.loads(tokenizer.to_str())
    for added in data["added_tokens"]:
        added["special"] = is_special(added["content"])
    # indent 2 without ASCII escapes is byte for byte what `tokenizer.save()` writes.
    (path / "tokenizer.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": is_special(tok),
        }
        for tok in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def build_tiny_model(
    path: str | Path,
    corpus: Iterable[str],
    *,
    seed: int = 0,
    vocab_size: int = 512,
    embed_std: float | None = None,
    **shape,
) -> Path:
    """Tokenizer + random-weight Qwen3 model in one folder that `mlx_lm.load` reads offline."""
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
    save_tokenizer(tokenizer, path)
    config = qwen3_config(
        vocab_size=tokenizer.get_vocab_size(),
        eos_token_id=tokenizer.token_to_id("<|im_end|>"),
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        **shape,
    )
    save_model(init_qwen3(config, seed=seed, embed_std=embed_std), config, path)
    return Path(path)
