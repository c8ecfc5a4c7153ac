"""Fused and PEFT exports of a run reproduce the LoRA model they came from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file

from mlx_grpo.config import TrainConfig
from mlx_grpo.errors import UserError
from mlx_grpo.export import write_peft
from mlx_grpo.hub import export_run
from mlx_grpo.rundir import read_run

KEYS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]
TOKENS = mx.array([[1, 5, 9, 42, 77, 100, 200, 3]])
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def make_run(folder: Path, base: Path, *, num_layers: int = 1, seed: int = 0):
    """A run directory as `mlx-grpo train` writes it, with random non-zero LoRA weights.

    Returns (run_dir, model): the model is the in-memory LoRA model the adapters came from.
    """
    from mlx_lm.tuner.lora import LoRALinear
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = mlx_lm.load(str(base))
    model.freeze()
    mx.random.seed(seed)
    lora = {"rank": 4, "scale": 20.0, "dropout": 0.0, "keys": KEYS}
    linear_to_lora_layers(model, num_layers, lora)
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.lora_b = 0.01 * mx.random.normal(m.lora_b.shape)  # lora_b starts at 0: make it matter
    model.eval()
    mx.eval(model.parameters())
    folder.mkdir(parents=True)
    mx.save_safetensors(str(folder / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    adapter_config = {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": lora,
        "base_model": str(base),
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config))
    config = TrainConfig(model=str(base), max_steps=3, lora_rank=4, lora_layers=num_layers, output_dir=str(folder))
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    rows = [{"step": 0, "eval/accuracy": 0.1, "eval/format_rate": 0.5}]
    rows += [{"step": s, "reward": 0.5 * s, "accuracy": 0.1 * s, "format_rate": 0.9, "loss": 0.01} for s in (1, 2, 3)]
    rows += [{"step": 3, "eval/accuracy": 0.375, "eval/format_rate": 0.875, "eval/completion_length": 120.5}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew')
    (folder / "plots").mkdir()
    (folder / "plots" / "reward_accuracy.png").write_bytes(PNG)
    return folder, model


def tree_hash(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_path):
    return make_run(tmp_path_factory.mktemp("export") / "run", tiny_model_path)


def test_peft_export_applied_with_numpy_matches_the_mlx_lora_layers(run, tmp_path):
    run_dir, model = run
    write_peft(read_run(run_dir), tmp_path, None)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] / config["r"] == 20.0
    assert sorted(config["target_modules"]) == sorted(KEYS)
    assert config["layers_to_transform"] == [1]  # num_layers=1 adapts only the last of 2 blocks
    assert config["bias"] == "none" and config["fan_in_fan_out"] is False
    assert len(tensors) == 2 * len(KEYS)
    rng = np.random.default_rng(0)
    block = model.model.layers[1]
    for key in KEYS:
        layer = block
        for part in key.split("."):
            layer = getattr(layer, part)
        prefix = f"base_model.model.model.layers.1.{key}"
        A, B = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
        W = np.array(layer.linear.weight)  # [out, in]
        assert A.shape == (4, W.shape[1]) and B.shape == (W.shape[0], 4)
        x = rng.normal(size=(3, W.shape[1])).astype(np.float32)  # [batch, in]
        expected = np.array(layer(mx.array(x)))
        got = x @ W.T + (config["lora_alpha"] / config["r"]) * (x @ A.T @ B.T)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_peft_export_refuses_dora(run, tmp_path):
    run_dir, _ = run
    lora = read_run(run_dir)
    dora = dataclasses.replace(lora, adapter_config={**lora.adapter_config, "fine_tune_type": "dora"})
    with pytest.raises(UserError, match="LoRA adapters only"):
        write_peft(dora, tmp_path, None)


def test_fused_folder_loads_alone_and_matches_base_plus_adapters(run, tmp_path, tiny_model_path):
    run_dir, model = run
    before = tree_hash(run_dir)
    files = export_run(run_dir, tmp_path / "fused", fuse=True)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training_config.json"} <= set(files)
    fused, _ = mlx_lm.load(str(tmp_path / "fused"))
    assert not any("lora" in name for name, _ in tree_flatten(fused.parameters()))
    expected = model(TOKENS)
    np.testing.assert_allclose(np.array(fused(TOKENS)), np.array(expected), atol=1e-4)
    base, _ = mlx_lm.load(str(tiny_model_path))
    assert np.abs(np.array(base(TOKENS)) - np.array(expected)).max() > 1e-2  # the adapters changed the model
    assert tree_hash(run_dir) == before


@pytest.mark.parametrize("bits, min_corr", [(4, 0.95), (8, 0.999)])
def test_quantized_fused_folder_loads_and_is_close(run, tmp_path, bits, min_corr):
    run_dir, model = run
    export_run(run_dir, tmp_path / "q", fuse=True, quantize=bits)
    fused, _, config = mlx_lm.load(str(tmp_path / "q"), return_config=True)
    assert config["quantization"]["bits"] == bits
    expected, got = np.array(model(TOKENS)), np.array(fused(TOKENS))
    # The tiny model's base alone correlates ~0.5 with base + adapters: these bounds need the adapters.
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > min_corr
