"""Same seed, same machine, same figures: two training processes agree metric for metric.

What the README's demo figures depend on beyond the seed (the CPU's OpenBLAS kernel and thread
count) is measured in the README; here, two runs in separate processes, with different hash seeds,
must write the same metrics, completions and adapters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

TIMING = ("time/", "tokens_per_s", "peak_memory_gb", "peak_rss_gb")  # measured, not computed


def _train(model, out, reward, seed: int, hash_seed: str) -> None:
    argv = [sys.executable, "-m", "mlx_grpo", "train", "--quiet", "--model", str(model), "--dataset", "generate"]
    argv += ["--reward", "format", "--reward", reward, "--num-samples", "40", "--batch-size", "2"]
    argv += ["--num-generations", "4", "--max-completion-length", "12", "--max-steps", "4", "--learning-rate", "5e-3"]
    argv += ["--eval-every", "2", "--eval-samples", "4", "--log-completions-every", "1", "--seed", str(seed)]
    # plain sampling: the Qwen3 defaults (top-k 20, T 0.6) leave a random tiny model too little to vary on
    argv += ["--temperature", "1.0", "--top-p", "1.0", "--top-k", "0"]
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    done = subprocess.run([*argv, "--output-dir", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr


def _figures(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


def test_same_seed_gives_the_same_metrics_completions_and_adapters(tiny_model_path, tmp_path, spaces_reward):
    reward = spaces_reward
    for name, seed, hash_seed in (("a", 0, "1"), ("b", 0, "2"), ("other", 1, "1")):
        _train(tiny_model_path, tmp_path / name, reward, seed, hash_seed)
    a, b, other = (tmp_path / n for n in ("a", "b", "other"))
    assert len(_figures(a)) >= 5 and _figures(a) == _figures(b)
    assert (a / "completions.jsonl").read_bytes() == (b / "completions.jsonl").read_bytes()
    assert (a / "adapters.safetensors").read_bytes() == (b / "adapters.safetensors").read_bytes()
    assert _figures(other) != _figures(a)  # the seed does reach the run
