"""The model card (README.md) of an uploaded run: Hub metadata, how it was trained, how to use it.

Functions of the run's configs and metrics: `summarize_metrics` picks the final training step and
the evaluations out of metrics.jsonl; `model_card` renders the card for one of three repo kinds
(mlx adapters, PEFT adapters, fused MLX model). The base model is named by its Hub id (`base_hub_id`)
and never by a path on this machine; its licence comes from its own card when there is one.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from mlx_grpo.countdown.prompts import build_messages
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.errors import UserError
from mlx_grpo.rundir import Run, read_jsonl

# Licences of base model families whose terms are known, for bases whose own card is not at hand;
# the card leaves the field out for the rest.
_LICENSES = {"Qwen/Qwen3-": "apache-2.0", "mlx-community/Qwen3-": "apache-2.0"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A local path inside the Hub cache still names its repo: .../models--Qwen--Qwen3-0.6B/snapshots/<sha>
_CACHED = re.compile(r"models--([\w.-]+?)--([\w.-]+)/snapshots/")

_EVAL_KEYS = ("eval/accuracy", "eval/format_rate", "eval/completion_length")


def hub_id(name: str | None) -> str | None:
    """The Hub repo id a model or dataset name refers to, or None for local files and "generate"."""
    if not name:
        return None
    cached = _CACHED.search(name)
    if cached:
        return f"{cached[1]}/{cached[2]}"
    if Path(name).expanduser().exists() or not _HUB_ID.match(name) or ".." in name:
        return None
    return name


def base_hub_id(run: Run, base_model_id: str | None = None) -> str | None:
    """The Hub id of the run's base model: `base_model_id` (`--base-model-id`, for a local copy of a
    Hub model), else the id the run loaded it by (a cached snapshot's path names its repo too), else
    None: the base is a local folder, and cards and PEFT configs say so instead of naming its path."""
    if base_model_id is None:
        return hub_id(run.base_model)
    if not _HUB_ID.match(base_model_id) or ".." in base_model_id:
        raise UserError(f"--base-model-id must be a Hub repo id of the form USER/NAME, got {base_model_id!r}")
    return base_model_id


def base_license(base_model: str, base_id: str | None) -> str | None:
    """The base model's licence: the `license` of its own card (README.md front matter) in its local
    folder or, for a Hub id, in the local Hub cache (offline); else a known family's; else None."""
    meta = _card_metadata_of(base_model, base_id)
    if isinstance(meta.get("license"), str):
        return meta["license"]
    return next((v for prefix, v in _LICENSES.items() if base_id and base_id.startswith(prefix)), None)


def _card_metadata_of(base_model: str, base_id: str | None) -> dict:
    from huggingface_hub import metadata_load, try_to_load_from_cache

    readme = Path(base_model).expanduser() / "README.md"
    if not readme.is_file() and base_id:
        cached = try_to_load_from_cache(base_id, "README.md")
        readme = Path(cached) if isinstance(cached, str) else readme
    try:
        return (metadata_load(readme) or {}) if readme.is_file() else {}
    except (OSError, ValueError, yaml.YAMLError):  # an unreadable card: as if there were none
        return {}


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl; torn or malformed lines (a killed run) are skipped."""
    return read_jsonl(path, strict=False)


def summarize_metrics(rows: list[dict]) -> dict:
    """The final numbers of a run: {"steps", "train": last step's row, "eval", "eval_baseline"}.

    `eval` is the last evaluation; `eval_baseline` the step-0 evaluation before training, when the
    run made one (and it is not also the last).
    """
    train = [r for r in rows if r.get("step", 0) >= 1 and "reward" in r]
    evals = [{k: r[k] for k in ("step", *_EVAL_KEYS) if k in r} for r in rows if "eval/accuracy" in r]
    summary: dict = {}
    if train:
        summary["steps"] = max(r["step"] for r in train)
        summary["train"] = max(train, key=lambda r: r["step"])
    if evals:
        summary["eval"] = evals[-1]
        if len(evals) > 1 and evals[0].get("step") == 0:
            summary["eval_baseline"] = evals[0]
    return summary


def card_metadata(run: Run, kind: str, *, base_model_id: str | None = None, quantization: dict | None = None) -> dict:
    """The card's YAML front matter (Hub metadata); `quantization` is a fused model's config entry."""
    base = base_hub_id(run, base_model_id)
    dataset = hub_id(run.train_config.get("dataset"))
    meta: dict = {}
    if base:
        meta["base_model"] = base
        meta["base_model_relation"] = "finetune" if kind == "fused" else "adapter"
    license_ = base_license(run.base_model, base)
    if license_:
        meta["license"] = license_
    meta["library_name"] = "peft" if kind == "peft" else "mlx"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["mlx", "grpo", "lora", "reinforcement-learning", "mlx-grpo", *(["peft"] if kind == "peft" else [])]
    if quantization:
        meta["tags"] += [f"{quantization['bits']}-bit", "quantized"]
    if dataset:
        meta["datasets"] = [dataset]
    return meta


def model_card(
    run: Run,
    *,
    kind: str,
    repo: str,
    metrics: dict,
    plots: list[str],
    base_model_id: str | None = None,
    quantization: dict | None = None,
) -> str:
    """README.md text: YAML front matter, then training summary, results, usage, and plots.

    Args:
        run: the run being published.
        kind: "adapters" (mlx-lm adapters), "peft" (PEFT adapters) or "fused" (merged MLX model).
        repo: the Hub repo id (USER/NAME) the card is for, or the local folder's absolute path.
        metrics: `summarize_metrics(...)` of the run.
        plots: plot files relative to the card, e.g. ["plots/reward_accuracy.png"].
        base_model_id: the base's Hub id when the run loaded it from a local folder (`base_hub_id`).
        quantization: a fused model's `quantization` config entry ({"bits", "group_size"}), if any.
    """
    base_id = base_hub_id(run, base_model_id)
    # A local base is named by a placeholder in the snippets: its path works on this machine only.
    base = base_id or f"path/to/{Path(run.base_model).name}"
    meta = card_metadata(run, kind, base_model_id=base_model_id, quantization=quantization)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    what = {
        "adapters": "LoRA adapters (mlx-lm format) for",
        "peft": "LoRA adapters (PEFT format) for",
        "fused": "A fine-tune of",
    }[kind]
    parts = [
        f"---\n{front}---\n",
        f"# {repo.rsplit('/', 1)[-1]}\n",
        f"{what} `{base_id or Path(run.base_model).name}`, trained with GRPO (Group Relative Policy "
        "Optimization) using mlx-grpo (LoRA on MLX).\n",
        _local_base_note(run, base, kind) if base_id is None else "",
        _quantization_note(quantization),
        _results(metrics),
        _training(run, metrics),
        _usage(kind, repo, base, run.train_config),
        "## Training curves\n\n" + "".join(f"![{Path(p).stem.replace('_', ' ')}]({p})\n" for p in plots)
        if plots
        else "",
    ]
    return "\n".join(p for p in parts if p)


def _local_base_note(run: Run, placeholder: str, kind: str) -> str:
    name = Path(run.base_model).name
    examples = "" if kind == "fused" else f", so the examples below write `{placeholder}` where your copy of it goes"
    return (
        f"The base model is a local folder (`{name}`), not a model on the Hugging Face Hub{examples}. "
        "Publish it and pass `--base-model-id USER/NAME` to `mlx-grpo push` or `mlx-grpo fuse`, and the "
        "card names it instead.\n"
    )


def _quantization_note(quantization: dict | None) -> str:
    if not quantization:
        return ""
    mode = quantization.get("mode", "affine")
    return (
        f"The weights are quantized to {quantization['bits']} bits (group size {quantization['group_size']}, "
        f"{mode} quantization, as `mlx_lm.convert -q` does); the norms stay in full precision.\n"
    )


def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "n/a"


def _results(metrics: dict) -> str:
    ev, base, train = metrics.get("eval"), metrics.get("eval_baseline"), metrics.get("train")
    if not (ev or train):
        return ""
    rows = ["## Results\n", "| metric | value |", "|---|---|"]
    if ev:
        before = f" (before training: {_pct(base['eval/accuracy'])})" if base else ""
        rows.append(f"| held-out accuracy (step {ev.get('step', '?')}) | {_pct(ev['eval/accuracy'])}{before} |")
        if "eval/format_rate" in ev:
            rows.append(f"| held-out format rate | {_pct(ev['eval/format_rate'])} |")
    if train:
        rows.append(f"| training reward, last step | {train.get('reward', float('nan')):.3f} |")
        if "accuracy" in train:
            rows.append(f"| training accuracy, last step | {_pct(train['accuracy'])} |")
    return "\n".join(rows) + "\n"


def _training(run: Run, metrics: dict) -> str:
    c, lora = run.train_config, run.adapter_config["lora_parameters"]
    settings = [
        ("dataset", c.get("dataset")),
        ("steps", metrics.get("steps", c.get("max_steps"))),
        ("rewards", ", ".join(c["rewards"]) if c.get("rewards") else None),
        ("loss", c.get("loss_type")),
        ("prompts per step (B)", c.get("batch_size")),
        ("completions per prompt (G)", c.get("num_generations")),
        ("learning rate", c.get("learning_rate")),
        ("KL weight (β)", c.get("beta")),
        ("clip range (ε)", _clip(c)),
        ("max completion length", c.get("max_completion_length")),
        ("sampling temperature", c.get("temperature")),
        ("LoRA rank / scale", f"{lora['rank']} / {lora['scale']} (PEFT lora_alpha {lora['rank'] * lora['scale']:g})"),
        ("LoRA blocks", f"the last {run.adapter_config['num_layers']}"),
        ("LoRA modules", ", ".join(lora.get("keys") or ["all linear layers"])),
        ("base quantized to", f"{c['quantize']} bits (QLoRA)" if c.get("quantize") else None),
        ("seed", c.get("seed")),
    ]
    rows = [f"| {name} | {value} |" for name, value in settings if value is not None]
    files = [f"`{name}`" for name, present in (("training_config.json", c), ("final_metrics.json", metrics)) if present]
    note = f"\nThe full configuration and final numbers are in {' and '.join(files)}.\n" if files else ""
    return "\n".join(["## Training\n", "| setting | value |", "|---|---|", *rows]) + "\n" + note


def _clip(config: dict) -> str | None:
    low, high = config.get("epsilon"), config.get("epsilon_high")
    if low is None:
        return None
    return f"{low}" if high is None else f"{low} / {high} (low / high)"


def _prompt_example(train_config: dict) -> tuple[str, str]:
    """(mlx_lm.generate flags, Python lines building `prompt`) for a Countdown task, rendered as in
    training: same system prompt and template, thinking switch and prefill."""
    system, user = (m["content"] for m in build_messages(Task(98, (44, 19, 35))))
    thinking = train_config.get("enable_thinking", True)
    prefill = train_config.get("prefill", "")
    flags = f"--system-prompt {shlex.quote(system)} --prompt {shlex.quote(user)}"
    flags += f" --max-tokens {_max_tokens(train_config)}"
    flags += "" if thinking else " --chat-template-config '{\"enable_thinking\": false}'"
    flags += f" --prefill-response {shlex.quote(prefill)}" if prefill else ""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    python = (
        f"messages = {json.dumps(messages, indent=4)}\n"
        "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False"
        + ("" if thinking else ", enable_thinking=False")
        + ")"
        + (f" + {json.dumps(prefill)}" if prefill else "")
        + "\n"
    )
    return flags, python


def _max_tokens(train_config: dict) -> int:
    return train_config.get("max_completion_length", 512)


def _usage(kind: str, repo: str, base: str, train_config: dict) -> str:
    """Install and run instructions for the repo's kind, with the prompt format the run trained on."""
    flags, prompt = _prompt_example(train_config)
    intro = "The examples use the Countdown prompt format the model was trained with.\n\n"
    generate = f"print(generate(model, tokenizer, prompt=prompt, max_tokens={_max_tokens(train_config)}))\n```\n"
    if kind == "peft":
        return (
            f"## Use with transformers + peft\n\n{intro}```python\nfrom peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")\n'
            f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{repo}")\n'
            f'{prompt}ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids\n'
            f"print(tokenizer.decode(model.generate(ids, max_new_tokens={_max_tokens(train_config)})[0]))\n```\n\n"
            "The base must be the full-precision transformers checkpoint of the model the run trained on.\n"
        )
    if kind == "fused":
        return (
            f"## Use with mlx-lm\n\n{intro}```bash\npip install mlx-lm\nmlx_lm.generate --model {repo} {flags}\n```\n\n"
            f'```python\nfrom mlx_lm import generate, load\n\nmodel, tokenizer = load("{repo}")\n{prompt}{generate}'
        )
    # mlx-lm reads adapters from a local folder only: a Hub repo is downloaded first.
    on_hub = hub_id(repo) is not None
    local = repo.rsplit("/", 1)[-1] if on_hub else repo
    fetch = f"hf download {repo} --local-dir {local}\n" if on_hub else ""
    imports = "from huggingface_hub import snapshot_download\n" if on_hub else ""
    adapter_path = f'snapshot_download("{repo}")' if on_hub else json.dumps(repo)
    return (
        f"## Use with mlx-lm\n\n{intro}```bash\npip install mlx-lm\n{fetch}"
        f"mlx_lm.generate --model {base} --adapter-path {local} {flags}\n```\n\n"
        f"```python\n{imports}from mlx_lm import generate, load\n\n"
        f'model, tokenizer = load("{base}", adapter_path={adapter_path})\n{prompt}{generate}\n'
        f"To merge the adapters into the base: `mlx_lm.fuse --model {base} --adapter-path {local}`.\n"
    )
