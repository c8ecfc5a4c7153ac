"""A finished run's adapters in other forms: merged into the base (fused) or in PEFT's layout.

A run directory holds mlx-lm adapters (`adapters.safetensors` + `adapter_config.json`), read and
checked once by `rundir.read_run`; `fuse_into_model` writes a complete MLX model with the adapters merged by
mlx-lm's own `fuse()` (as `mlx_lm.fuse` does); `write_peft` writes the adapters as transformers +
peft users load them. Nothing here writes into the run directory.

mlx-lm and PEFT compute the same LoRA update with transposed factors:

    mlx-lm:  y = x @ W.T + scale * (x @ lora_a) @ lora_b        lora_a [in, r], lora_b [r, out]
    PEFT:    y = x @ W.T + (alpha / r) * x @ A.T @ B.T          A [r, in],      B [out, r]

so A = lora_a.T, B = lora_b.T and alpha = scale * r.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_grpo.errors import UserError
from mlx_grpo.rundir import ADAPTER_WEIGHTS, Run

if TYPE_CHECKING:  # imported where used: the CLI imports this module for every command
    import mlx.core as mx

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"

# mlx-lm names a block's LoRA factors `<prefix>.layers.<i>.<module>.lora_a`; the prefix and the
# module path match the Hugging Face model's own names for the architectures mlx-lm ports.
_LORA_NAME = re.compile(r"^(?P<module>(?:.+\.)?layers\.(?P<layer>\d+)\.(?P<key>.+))\.lora_(?P<ab>[ab])$")


# --- fused ---------------------------------------------------------------------------------------


def fuse_into_model(
    run: Run,
    dest: Path,
    *,
    quantize: int | None = None,
    dequantize: bool = False,
    trust_remote_code: bool = False,
) -> None:
    """Write base + adapters as one MLX model folder (config, tokenizer, weights) into `dest`.

    The merge is mlx-lm's `LoRALinear.fuse` (W + scale * lora_b.T @ lora_a.T), applied as
    `mlx_lm.fuse` applies it. A quantized base stays quantized unless `dequantize`; `quantize`
    (4 or 8 bits, group size 64) quantizes the merged weights, from full precision.
    """
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, quantize_model, save

    model, tokenizer, config = _load_with_adapters(run, trust_remote_code)
    full_precision = dequantize or quantize is not None
    fused = [(name, m.fuse(dequantize=full_precision)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    model.update_modules(tree_unflatten(fused))
    if full_precision:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    if quantize is not None:
        with contextlib.redirect_stdout(None):  # it prints bits per weight
            model, config = quantize_model(model, config, group_size=64, bits=quantize)
    # save() copies generation_config.json from the base's local folder and writes a stub card
    # (the caller writes the real one); a hub id is already in the local cache after loading.
    save(dest, _local_model_path(run.base_model), model, tokenizer, config, donate_model=False)


def _load_with_adapters(run: Run, trust_remote_code: bool):
    import mlx_lm

    try:
        return mlx_lm.load(
            run.base_model, adapter_path=str(run.path), return_config=True, trust_remote_code=trust_remote_code
        )
    except Exception as e:  # mlx-lm and huggingface_hub raise many types; all mean "cannot load"
        text = " ".join(str(e).split())[:300]
        raise UserError(
            f"cannot load {run.base_model} with the adapters in {run.path}: {type(e).__name__}: {text}"
        ) from None


def _local_model_path(base_model: str) -> Path:
    path = Path(base_model).expanduser()
    if path.exists():
        return path
    from mlx_lm.utils import hf_repo_to_path

    return hf_repo_to_path(base_model)


# --- PEFT ----------------------------------------------------------------------------------------


def peft_tensors(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """mlx-lm LoRA factors renamed and transposed to PEFT's layout.

    Example: `model.layers.0.self_attn.q_proj.lora_a` [in, r] becomes
    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` [r, in], and `...lora_b`
    [r, out] becomes `...lora_B.weight` [out, r].
    """
    out = {}
    for name, w in weights.items():
        match = _LORA_NAME.match(name)
        if match is None or w.ndim != 2:
            raise UserError(f"cannot convert {name} to PEFT: LoRA on the linear layers of transformer blocks only")
        out[f"base_model.model.{match['module']}.lora_{match['ab'].upper()}.weight"] = w.T
    return out


def peft_config(adapter_config: dict, weights: dict[str, mx.array], base_model: str | None) -> dict:
    """PEFT's `adapter_config.json` for these adapters: alpha / r equals mlx-lm's scale.

    `base_model` is the base's Hub id, or None for a local base (PEFT's own default when unknown):
    a path on this machine would send `AutoPeftModel` looking for a folder nobody else has.
    """
    params = adapter_config["lora_parameters"]
    rank, scale = int(params["rank"]), float(params["scale"])
    alpha = scale * rank
    matches = [_LORA_NAME.match(name) for name in weights]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "lora_dropout": float(params.get("dropout", 0.0)),
        "target_modules": sorted({m["key"] for m in matches}),
        # mlx-lm adapts the last `num_layers` blocks only; name them so PEFT does the same.
        "layers_to_transform": sorted({int(m["layer"]) for m in matches}),
        "layers_pattern": "layers",
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }


def write_peft(run: Run, dest: Path, base_model: str | None) -> None:
    """Write `adapter_model.safetensors` + `adapter_config.json` in PEFT's layout into `dest`;
    `base_model` is the Hub id recorded as the base (None: a local base, see `peft_config`)."""
    import mlx.core as mx

    kind = run.adapter_config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise UserError(f"--format peft supports LoRA adapters only (this run is {kind!r})")
    weights = mx.load(str(run.path / ADAPTER_WEIGHTS))
    tensors = peft_tensors(weights)
    dest.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(dest / PEFT_WEIGHTS), tensors, metadata={"format": "pt"})
    config = peft_config(run.adapter_config, weights, base_model)
    (dest / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
