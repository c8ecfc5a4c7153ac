"""Helpers of the data-parallel tests: rank processes on a localhost ring and what their runs wrote.

Each test starts real ranks (`tests/dist_worker.py` or the CLI) with MLX_RANK / MLX_HOSTFILE, as
`mlx.launch --backend ring` does, and compares what they write with a single process's run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from ranks import ring_hosts  # noqa: E402  (the launcher's own free-port hostfile)

WORKER = ROOT / "tests" / "dist_worker.py"
TIMINGS = ("time/", "tokens_per_s", "peak_memory_gb", "peak_rss_gb", "sampling/generate_s")
UPDATE_FIGURES = ("loss", "kl", "clip_frac/low", "clip_frac/high", "ratio/mean", "grad_norm")


def settings(model_path, out, reward, **overrides) -> dict:
    config = dict(
        model=str(model_path),
        dataset="generate",
        rewards=["format", "equation", reward],
        num_samples=40,
        test_size=0.2,
        batch_size=4,
        num_generations=4,
        max_completion_length=12,
        temperature=1.0,  # full-distribution sampling (the defaults are Qwen3's top-k/top-p)
        top_p=1.0,
        top_k=0,
        max_steps=3,
        learning_rate=1e-3,  # small steps: rounding that Adam amplifies must not flip a sampled token
        output_dir=str(out),
        eval_every=2,
        eval_samples=6,
        save_every=2,
        log_completions_every=1,
        seed=3,
    )
    config.update(overrides)
    return config


def ring_env(world: int) -> list[dict]:
    """The environment of each rank of a localhost ring (free ports, a hostfile as mlx.launch writes)."""
    hosts = ring_hosts(world)
    hostfile = Path(os.environ.get("TMPDIR", "/tmp")) / f"mlx-grpo-ring-{os.getpid()}-{hosts[0][0][10:]}.json"
    hostfile.write_text(json.dumps(hosts))
    return [{**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)} for r in range(world)]


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def run_worker(config: dict, adapters: Path, *, world: int = 1, **extra) -> list[str]:
    """Train with `world` ranks until the end; return each rank's stderr."""
    args = [sys.executable, str(WORKER), json.dumps({"config": config, "adapters": str(adapters), **extra})]
    if world == 1:
        procs = [start(args, {k: v for k, v in os.environ.items() if not k.startswith("MLX_")})]
    else:
        procs = [start(args, env) for env in ring_env(world)]
    outputs = [p.communicate(timeout=3600) for p in procs]  # only catches a blow-up: a minute on a busy machine
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    return [err for _, err in outputs]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def load(path) -> dict:
    return {k: np.array(v) for k, v in mx.load(str(path)).items()}


def assert_same_adapters(got: dict, want: dict, start: dict) -> None:
    """As in test_update: the distance between two runs, against how far training moved them."""
    flat = [np.concatenate([w[n].ravel() for n in sorted(w)]) for w in (got, want, start)]
    assert np.linalg.norm(flat[0] - flat[1]) < 1e-3 * np.linalg.norm(flat[1] - flat[2])


def assert_same_metrics(got: list[dict], want: list[dict], ignore: tuple = TIMINGS, rows_rel: float = 0) -> None:
    """`rows_rel`: the tolerance of per-row means (0: exact), for rows that come in another order."""
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for g, w in zip(got, want):
        keys = [k for k in w if not k.startswith(ignore)]
        assert sorted(k for k in g if not k.startswith(ignore)) == sorted(keys)
        for k in keys:
            if k in UPDATE_FIGURES:  # sums over ranks round otherwise, and Adam amplifies it (test_update)
                assert g[k] == pytest.approx(w[k], rel=1e-2, abs=1e-6), (g["step"], k)
            elif rows_rel and isinstance(w[k], float):  # the same rows summed in another order
                assert g[k] == pytest.approx(w[k], rel=rows_rel), (g["step"], k)
            else:  # per-row figures and eval accuracy: the same samples, counted once
                assert g[k] == w[k], (g["step"], k)


def initial_adapters(model_path, tmp_path, reward, **overrides) -> dict:
    """The adapters before any step (the same seed gives every run the same LoRA init)."""
    from mlx.utils import tree_flatten

    from mlx_grpo.config import TrainConfig
    from mlx_grpo.trainer import prepare

    training = prepare(TrainConfig(**settings(model_path, tmp_path / "init", reward, **overrides)))
    training.lock.release()
    return {k: np.array(v) for k, v in tree_flatten(training.model.trainable_parameters())}
