"""The policy: an mlx-lm causal LM with LoRA adapters, loaded, switched and saved.

The reference policy for the KL term is the same model with its adapters switched off
(`adapters_disabled`), so the base weights are never copied for it. Only sampling from a small model
uses merged copies of the adapted weights (`adapters_merged`, bounded by MERGE_MAX_BYTES).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_grpo.errors import UserError
from mlx_grpo.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name))


def load_model(
    name: str,
    *,
    quantize: int | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    adapter_path: str | None = None,
):
    """Load `(model, tokenizer)` with `mlx_lm.load` from a local folder or a Hub id.

    Args:
        name: local path or Hugging Face repo id.
        quantize: 4 or 8 to quantize the base weights after loading (QLoRA); None keeps them.
        dtype: "auto" casts floating weights to float32 on the CPU (bf16 matmul is slow there) and
            keeps the stored dtype on GPUs; or an explicit "float32" / "bfloat16" / "float16".
        trust_remote_code: passed to mlx-lm; off unless the user asks for it.
        adapter_path: an adapter folder (adapters.safetensors + adapter_config.json) to apply.

    Raises:
        UserError: a missing path, a folder that is not a model, an unreachable hub id, or
            adapters that do not fit the model; always as one line.
    """
    import mlx_lm

    check_model_source(name)
    path = Path(name).expanduser()
    if adapter_path is not None:
        _check_adapter_folder(adapter_path)
    if not path.exists():
        _check_hub_reachable(name)
    try:
        model, tokenizer = mlx_lm.load(
            str(path) if path.exists() else name,
            adapter_path=adapter_path,
            trust_remote_code=trust_remote_code,
        )
    except UserError:
        raise
    except Exception as e:  # mlx-lm / huggingface_hub raise many types; all mean "cannot load"
        raise UserError(_load_error_message(name, path.exists(), e)) from None
    _cast(model, dtype)
    if quantize is not None:
        from mlx_lm.utils import quantize_model

        with contextlib.redirect_stdout(None):
            quantize_model(model, {}, group_size=64, bits=quantize)
    mx.eval(model.parameters())
    return model, tokenizer


def _load_error_message(name: str, is_local: bool, error: Exception) -> str:
    text = " ".join(str(error).split())[:300]
    if "trust_remote_code" in str(error):  # mlx-lm refused a config.json `model_file`
        return f"{name} builds its architecture with its own Python code; pass --trust-remote-code only if you trust it"
    if is_local:
        return f"cannot load model from {name}: {type(error).__name__}: {text}"
    return (
        f"cannot load {name} from the Hugging Face Hub ({type(error).__name__}). "
        "Check the network and the id, or run the offline demo: `make demo` (bundled tiny model)"
    )


def check_model_source(name: str) -> None:
    """Fail early (before data or weights load) on a path that cannot be a model."""
    path = Path(name).expanduser()
    if not path.exists() and not _looks_like_hub_id(name):
        raise UserError(f"model not found: {name} (not a local folder, and not a Hub id like Qwen/Qwen3-0.6B)")
    if path.exists() and not (path / "config.json").is_file():
        raise UserError(f"not a model folder: {name} (no config.json)")


def _check_hub_reachable(name: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    from mlx_grpo.network import hub_offline_reason

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local Hub cache: mlx-lm loads it without the network
    reason = hub_offline_reason()
    if reason:
        raise UserError(
            f"cannot load {name}: the Hugging Face Hub is out of reach ({reason}) and the model is not in the local "
            "cache. Run the offline demo instead: `make demo` (bundled tiny model)"
        )


def _check_adapter_folder(adapter_path: str) -> None:
    folder = Path(adapter_path)
    for needed in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / needed).is_file():
            raise UserError(f"not an adapter folder: {adapter_path} (missing {needed})")


def _cast(model: nn.Module, dtype: str) -> None:
    if dtype == "auto":
        if mx.default_device().type != mx.cpu:
            return
        dtype = "float32"
    target = getattr(mx, dtype)
    model.update(tree_map(lambda p: p.astype(target) if mx.issubdtype(p.dtype, mx.floating) else p, model.parameters()))


def lora_keys(model: nn.Module) -> list[str]:
    """Names (relative to a transformer block) of every linear layer LoRA can wrap."""
    keys = set()
    for name, module in model.layers[0].named_modules():
        if isinstance(module, (nn.Linear, nn.QuantizedLinear)):
            keys.add(name)
    return sorted(keys)


def add_lora(
    model: nn.Module, *, rank: int, scale: float, dropout: float = 0.0, num_layers: int = -1, seed: int = 0
) -> dict:
    """Freeze the model and wrap its linear layers with mlx-lm LoRA layers; return adapter_config.

    `num_layers` = -1 adapts every transformer block, N the last N. lora_b starts at zero, so the
    adapted model starts out equal to the base.
    """
    from mlx_lm.tuner.utils import linear_to_lora_layers

    n_blocks = len(model.layers)
    num_layers = n_blocks if num_layers == -1 else min(num_layers, n_blocks)
    params = {"rank": rank, "scale": scale, "dropout": dropout, "keys": lora_keys(model)}
    model.freeze()
    mx.random.seed(seed)  # lora_a's init draws from the global generator
    linear_to_lora_layers(model, num_layers, params)
    mx.eval(model.parameters())
    return {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model (the GRPO reference policy): every LoRA layer is swapped for the layer it
    wraps for the block. The output is exactly the base model's, and the adapter's matmuls are not
    computed at all (zeroing the LoRA scales still runs them: ~7% of a tiny model's forward pass)."""
    from mlx_lm.tuner.lora import LoRALinear

    lora = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    model.update_modules(tree_unflatten([(name, m.linear) for name, m in lora]))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(lora))


# Merged copies of the adapted weights cost memory; they pay off only where LoRA's extra small
# ops are a visible share of a step, in small models (tiny Qwen3: ~7% of sampling).
MERGE_MAX_BYTES = 64 * 2**20


@contextlib.contextmanager
def adapters_merged(model: nn.Module, max_bytes: int = MERGE_MAX_BYTES) -> Iterator[nn.Module]:
    """Run the adapted model with each LoRA layer merged into its base layer (`W + scale·BᵀAᵀ`) for
    the block: the same function up to float rounding, one matmul per layer instead of three. For
    sampling, where the per-op cost of a small model adds up over every token.

    Left as it is when the merged weights would take more than `max_bytes` (a second copy of every
    adapted matrix), and for quantized base layers. The base weights are restored as they were.
    """
    from mlx_lm.tuner.lora import LoRALinear

    lora = [
        (name, m, m.linear.weight)
        for name, m in model.named_modules()
        if isinstance(m, LoRALinear) and isinstance(m.linear, nn.Linear)
    ]
    if not lora or sum(w.nbytes for _, _, w in lora) > max_bytes:
        yield model
        return
    for _, m, w in lora:
        m.linear.weight = w + ((m.scale * m.lora_b.T) @ m.lora_a.T).astype(w.dtype)  # [out, in]
    model.update_modules(tree_unflatten([(name, m.linear) for name, m, _ in lora]))
    try:
        yield model
    finally:
        for _, m, w in lora:
            m.linear.weight = w
        model.update_modules(tree_unflatten([(name, m) for name, m, _ in lora]))


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def save_safetensors(path: Path, arrays: dict) -> None:
    """`mx.save_safetensors`, its failure to write raised as the OSError it is (MLX raises a
    RuntimeError without the errno), so callers that turn disk errors into one line see it."""
    try:
        mx.save_safetensors(str(path), arrays)
    except RuntimeError as e:
        full = shutil.disk_usage(path.parent).free < sum(a.nbytes for a in arrays.values())
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, f"{os.strerror(code)} ({e})", str(path)) from None


def save_adapters(model: nn.Module, folder: str | Path, adapter_config: dict) -> None:
    """Write `adapters.safetensors` + `adapter_config.json` as mlx-lm reads them (not atomic: the
    checkpoint module writes into a temp dir and renames)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / ADAPTER_WEIGHTS, adapter_weights(model))
    (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")


def load_adapter_weights(model: nn.Module, folder: str | Path) -> None:
    """Load saved adapter weights into a model that already has matching LoRA layers."""
    path = Path(folder) / ADAPTER_WEIGHTS
    weights = mx.load(str(path))
    expected = adapter_weights(model)
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in weights):
        raise UserError(f"adapters in {folder} do not match the model (different layers, rank or shapes)")
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
