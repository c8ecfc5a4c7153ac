"""The README's real run as typed: `mlx-grpo train --output-dir runs/qwen3-countdown`, no --model and
no --dataset, offline, against a local Hugging Face cache (tests/hf_cache.py) where the default ids
resolve to a tiny random Qwen3 with the real tokenizer and to the real Countdown rows.

Only flags that make it short are added. It runs as a real process, as a user's shell starts it, so
HF_HOME and the offline switches take effect the way they do on a Mac: when the libraries load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_grpo.countdown.data import load_tasks, split_tasks
from mlx_grpo.episodes import task_indices

README = Path(__file__).resolve().parents[1] / "README.md"
COUNTDOWN = "Jiayi-Pan/Countdown-Tasks-3to4"
COMMAND = ["train", "--output-dir", "runs/qwen3-countdown"]
SHORT = ["--max-steps", "2", "--batch-size", "2", "--num-generations", "2", "--max-completion-length", "8"]
NO_EVAL = ["--eval-every", "0", "--eval-samples", "2", "--quiet"]  # eval_every 0 still evaluates at the end


def mlx_grpo(args: list[str], hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `mlx-grpo` script, offline, with only `hf_home` as the Hugging Face cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # no cache paths of this machine
    env |= {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    script = Path(sys.executable).with_name("mlx-grpo")
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(offline_hf_home, tmp_path_factory) -> Path:
    """A folder where the README's command (made short) ran once; its run is `runs/qwen3-countdown`."""
    cwd = tmp_path_factory.mktemp("readme")
    result = mlx_grpo(COMMAND + SHORT + NO_EVAL, offline_hf_home, cwd)
    assert result.returncode == 0, result.stderr
    assert f"model: Qwen/Qwen3-0.6B  dataset: {COUNTDOWN}" in result.stderr
    return cwd


def test_the_command_is_the_readmes():
    assert "mlx-grpo " + " ".join(COMMAND) in README.read_text()


@pytest.mark.slow
def test_readme_train_command_runs_offline_on_the_default_model_and_dataset(workspace, offline_hf_home, shared_data):
    run = workspace / "runs" / "qwen3-countdown"
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["dataset"], config["num_samples"]) == ("Qwen/Qwen3-0.6B", COUNTDOWN, None)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()] == [1, 2]
    # The tasks came through `datasets` from the cache: exactly those the same rows give as a local file.
    train, _ = split_tasks(load_tasks(str(shared_data / "countdown_real_sample.jsonl"), seed=0), 0.1)
    expected = {train[i] for i in task_indices(1, 2, len(train), seed=0)}  # completions are logged at step 1
    logged = {(row["target"], tuple(row["nums"])) for row in map(json.loads, (run / "completions.jsonl").open())}
    assert logged == {(task.target, task.nums) for task in expected}

    evaluated = mlx_grpo(
        ["eval", "--model", "Qwen/Qwen3-0.6B", "--adapter-path", "runs/qwen3-countdown", "--dataset", COUNTDOWN]
        + ["--num-samples", "2", "--max-tokens", "4", "--quiet"],
        offline_hf_home,
        workspace,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "accuracy" in evaluated.stdout


@pytest.mark.slow
def test_the_run_directory_loads_with_mlx_lm(workspace, offline_hf_home):
    import mlx.core as mx
    import mlx_lm
    from huggingface_hub import snapshot_download
    from mlx.utils import tree_flatten

    run = workspace / "runs" / "qwen3-countdown"
    base = snapshot_download("Qwen/Qwen3-0.6B", cache_dir=offline_hf_home / "hub", local_files_only=True)
    model, tokenizer = mlx_lm.load(base, adapter_path=str(run))
    saved = mx.load(str(run / "adapters.safetensors"))
    loaded = dict(tree_flatten(model.parameters()))
    assert saved and all(mx.array_equal(loaded[name], weight).item() for name, weight in saved.items())
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer.vocab) == 151669  # the real Qwen3 tokenizer
    assert mlx_lm.generate(model, tokenizer, prompt="Hi", max_tokens=2)
