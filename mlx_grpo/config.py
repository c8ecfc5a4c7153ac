"""The one training configuration: defaults < config file (YAML/TOML) < command line.

Each field maps to a GRPO symbol where one exists (G, μ, β, ε). The dataclass validates itself on
creation, so a bad value fails before any model is loaded or any file is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_grpo.errors import UserError

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
LR_SCHEDULES = ("constant", "linear", "cosine")
_MEMORY_UNITS = {"GB": 2**30, "G": 2**30, "MB": 2**20, "M": 2**20}
# Qwen's documented early-stop text for budgeted thinking, verbatim (docs/recipe.md, [S1]): 24 tokens
QWEN3_THINKING_STOP_TEXT = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the thinking directly now."
    "\n</think>\n\n"
)


def memory_bytes(text: str) -> int:
    """A memory size as `--max-memory` takes it ("12GB", "512MB", "8G", or bytes) -> bytes.

    Raises:
        UserError: malformed, not finite, or not positive.
    """
    upper = text.strip().upper()
    unit = next((u for u in _MEMORY_UNITS if upper.endswith(u)), None)
    try:
        size = float(upper[: -len(unit)] if unit else upper) * (_MEMORY_UNITS[unit] if unit else 1)
    except ValueError:
        size = math.nan
    if not (math.isfinite(size) and size >= 1):
        raise UserError(f"invalid config: max_memory must be auto, none or a size like 12GB or 512MB (got {text!r})")
    return int(size)


def _setting(default, help: str, *, choices: tuple = (), factory=None):
    """A TrainConfig field with its help text (and allowed values) for the CLI and the docs."""
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    # --- model -----------------------------------------------------------------------------
    model: str = _setting("Qwen/Qwen3-0.6B", "Hub id or local folder of an mlx-lm causal LM.")
    quantize: int | None = _setting(None, "Quantize the base weights on load to 4 or 8 bits (QLoRA).", choices=(4, 8))
    dtype: str = _setting(
        "auto",
        "Weight dtype; auto = float32 on CPU (bf16 matmul is slow there), as stored on GPU.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    trust_remote_code: bool = _setting(False, "Allow models that need their own Python code.")
    # --- data ------------------------------------------------------------------------------
    dataset: str = _setting(
        "Jiayi-Pan/Countdown-Tasks-3to4", "Hub dataset id, local .jsonl/.json/.parquet/.csv file, or 'generate'."
    )
    num_samples: int | None = _setting(
        None, "Tasks drawn after a seeded shuffle (train + test); unset: 1000, or all of a smaller dataset."
    )
    test_size: float = _setting(0.1, "Fraction of the tasks held out for evaluation.")
    enable_thinking: bool = _setting(True, "Qwen3 chat-template thinking switch.")
    prefill: str = _setting(
        "<think>\n", "Text the assistant turn starts with (every row starts inside its think block)."
    )
    # --- rollout ---------------------------------------------------------------------------
    batch_size: int = _setting(4, "B: prompts per step.")
    num_generations: int = _setting(8, "G: completions per prompt (>= 2).")
    max_completion_length: int = _setting(
        1176, "Most tokens per completion: thought, stop text and answer (1024 + 24 + 128)."
    )
    max_thinking_tokens: int = _setting(
        1024,
        "Thinking budget: a row still inside <think> after N tokens gets thinking_stop_text appended "
        "(0 = off; off too when not below max_completion_length).",
    )
    thinking_stop_text: str = _setting(
        QWEN3_THINKING_STOP_TEXT, "Appended by the sampler at the thinking budget; must contain </think> (Qwen3's)."
    )
    max_answer_tokens: int = _setting(128, "Most tokens after the think block closes (with the thinking budget on).")
    temperature: float = _setting(0.6, "Sampling temperature (the update's log-probs use the same).")
    top_p: float = _setting(0.95, "Nucleus sampling mass (1 = off).")
    top_k: int = _setting(20, "Sample from the k most likely tokens only (0 = off).")
    # --- objective -------------------------------------------------------------------------
    rewards: list = _setting(
        None,
        "Reward: a name (format, equation, ...), module:function or file.py:function, optional =WEIGHT. Repeatable.",
        factory=lambda: ["format", "equation"],
    )
    loss_type: str = _setting("dapo", "How per-token losses are averaged.", choices=LOSS_TYPES)
    scale_rewards: str = _setting(
        "group", "Divide advantages by the group's std, the batch's, or not at all.", choices=SCALE_REWARDS
    )
    beta: float = _setting(0.0, "β: KL weight towards the base model (0 skips the reference pass).")
    epsilon: float = _setting(0.2, "ε: lower clip range of the ratio.")
    epsilon_high: float | None = _setting(None, "Upper clip range (DAPO clip-higher); default = epsilon.")
    num_iterations: int = _setting(1, "μ: updates per batch of generations.")
    # --- dynamic sampling and overlong handling (DAPO) ------------------------------------------
    dynamic_sampling: bool = _setting(
        False, "Drop groups whose filter signal is the same for every completion; sample more prompts to refill."
    )
    dynamic_sampling_signal: str = _setting(
        "correct", "Filter signal: correct (equation correctness), total (the weighted reward), or a reward name."
    )
    max_sampling_rounds: int = _setting(4, "Most sampling rounds per step with dynamic sampling (1 = filter only).")
    mask_truncated_completions: bool = _setting(False, "Completions cut by the length cap contribute no loss.")
    overlong_buffer: int | None = _setting(
        None, "Tokens before the cap where the 'overlong' reward falls from 0 to -1; unset: a fifth of the cap."
    )
    # --- optimisation ----------------------------------------------------------------------
    learning_rate: float = _setting(3e-6, "AdamW learning rate (LoRA wants ~10x a full fine-tune's; docs/recipe.md).")
    weight_decay: float = _setting(0.0, "AdamW weight decay.")
    warmup_steps: int = _setting(0, "Linear learning-rate warm-up steps.")
    lr_schedule: str = _setting(
        "constant", "Learning rate after the warm-up: constant, or decayed to 0 at max_steps.", choices=LR_SCHEDULES
    )
    max_grad_norm: float = _setting(1.0, "Clip the gradient to this global norm.")
    grad_accumulation: int | None = _setting(
        None, "Micro-batches per update (splits the B*G rows); unset: 1, or the fewest that fit --max-memory."
    )
    gradient_checkpointing: bool | None = _setting(
        None,
        "Recompute each transformer block in the backward pass (far less memory, a slower update); "
        "unset: on when --max-memory needs it, or when it keeps micro-batches of whole groups (faster).",
    )
    max_steps: int = _setting(200, "Training steps.")
    lora_rank: int = _setting(8, "LoRA rank.")
    lora_scale: float = _setting(20.0, "mlx-lm LoRA scale (PEFT lora_alpha = scale * rank).")
    lora_dropout: float = _setting(0.0, "Dropout on the LoRA input.")
    lora_layers: int = _setting(-1, "Adapt the last N transformer blocks; -1 = all.")
    # --- bookkeeping -----------------------------------------------------------------------
    output_dir: str = _setting("runs/countdown", "Run directory: checkpoints, adapters, logs, plots.")
    seed: int = _setting(0, "Seed of the data order, sampling and LoRA initialisation.")
    eval_every: int = _setting(50, "Held-out evaluation every N steps (0 = only at the end).")
    eval_samples: int = _setting(200, "Held-out tasks per evaluation (capped by the split's size).")
    save_every: int = _setting(50, "Checkpoint every N steps.")
    log_completions_every: int = _setting(10, "Write the sampled completions every N steps.")
    max_bad_steps: int = _setting(5, "Stop after N consecutive non-finite updates.")
    max_memory: str | None = _setting(
        "auto",
        "Memory budget of a step, e.g. 12GB: sets the micro-batches, checkpointing and rows decoded per call; "
        "auto = the weights + 4 GB (a 16 GB Mac keeps room), none = no budget; on Metal also MLX's memory limit.",
    )
    report_to: str | None = _setting(
        None, "Also log metrics to tensorboard or wandb.", choices=("tensorboard", "wandb")
    )
    push_to_hub: str | None = _setting(None, "Upload the adapters to this Hub repo (USER/NAME) at the end.")

    def __post_init__(self):
        _coerce_types(self)
        self.validate()

    def validate(self) -> None:
        checks = [
            (
                self.num_generations >= 2,
                "num_generations must be at least 2 (GRPO compares completions within a group)",
            ),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.max_completion_length >= 1, "max_completion_length must be positive"),
            (self.max_thinking_tokens >= 0, "max_thinking_tokens must be >= 0 (0 = off)"),
            (self.max_answer_tokens >= 1, "max_answer_tokens must be positive"),
            ("</think>" in self.thinking_stop_text, "thinking_stop_text must contain </think>"),
            (self.max_steps >= 1, "max_steps must be positive"),
            (self.temperature > 0, "temperature must be positive"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.beta >= 0, "beta must be >= 0"),
            (0 <= self.epsilon < 1, "epsilon must be in [0, 1)"),
            (self.epsilon_high is None or self.epsilon_high >= 0, "epsilon_high must be >= 0"),
            (self.num_iterations >= 1, "num_iterations must be at least 1"),
            (self.max_sampling_rounds >= 1, "max_sampling_rounds must be at least 1"),
            (
                self.overlong_buffer is None or 1 <= self.overlong_buffer <= self.max_completion_length,
                "overlong_buffer must be in [1, max_completion_length]",
            ),
            (self.num_samples is None or self.num_samples >= 1, "num_samples must be positive"),
            (0 < self.test_size < 1, "test_size must be a fraction in (0, 1)"),
            (self.lora_rank >= 1, "lora_rank must be positive"),
            (self.lora_scale > 0, "lora_scale must be positive"),
            (0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
            (self.lora_layers == -1 or self.lora_layers >= 1, "lora_layers must be -1 (all) or positive"),
            (self.grad_accumulation is None or self.grad_accumulation >= 1, "grad_accumulation must be at least 1"),
            (
                (self.batch_size * self.num_generations) % (self.grad_accumulation or 1) == 0,
                "grad_accumulation must divide batch_size * num_generations",
            ),
            (self.max_grad_norm > 0, "max_grad_norm must be positive"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.eval_every >= 0, "eval_every must be >= 0"),
            (self.eval_samples >= 1, "eval_samples must be positive"),
            (self.save_every >= 1, "save_every must be positive"),
            (self.log_completions_every >= 1, "log_completions_every must be positive"),
            (self.max_bad_steps >= 1, "max_bad_steps must be positive"),
            (len(self.rewards) >= 1, "at least one reward is needed"),
        ]
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata["choices"]
            if choices and value is not None and value not in choices:
                checks.append((False, f"{f.name} must be one of {', '.join(map(str, choices))} (got {value!r})"))
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid config: {message}")
        for name in ("learning_rate", "temperature", "beta", "epsilon", "lora_scale", "max_grad_norm"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"invalid config: {name} must be finite")
        if self.max_memory not in (None, "auto", "none"):
            memory_bytes(self.max_memory)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce_types(config: TrainConfig) -> None:
    """Check each field's type, converting only what is unambiguous (YAML reads `1e-5` as a str)."""
    for name, hint in _field_types().items():
        value = getattr(config, name)
        setattr(config, name, _coerce(name, value, hint))


def _coerce(name: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None` (types.UnionType) or Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"invalid config: {name} must be true or false (got {value!r})")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"invalid config: {name} must be an integer (got {value!r})")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"invalid config: {name} must be a number (got {value!r})")
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"invalid config: {name} must be a string (got {value!r})")
    if hint is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise UserError(f"invalid config: {name} must be a list of strings (got {value!r})")
    return value


def read_config_file(path: str | Path) -> dict:
    """Read a YAML or TOML config file into a dict of TrainConfig fields (keys may use '-')."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise UserError(f"cannot parse config file {path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # the parsers' own exception types differ; all mean "malformed"
        raise UserError(f"cannot parse config file {path}: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of settings")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown key(s) in {path}: {', '.join(unknown)}")
    return data


def build_config(
    config_file: str | Path | None = None, overrides: dict | None = None, base: dict | None = None
) -> TrainConfig:
    """Defaults, then `base` (e.g. a bundled preset), then the file, then command-line overrides.

    Overrides whose value is None were not given on the command line and do not count.
    """
    values: dict = dict(base or {})
    if config_file is not None:
        values.update(read_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig(**values)


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
