"""Smoke test of scripts/bench.py: one quick run on the tiny shape, checking what it reports."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_rollouts_skips_absent_peers_and_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main(
        [
            "--quick",
            "--shapes",
            "tiny",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--only",
            "ours-rollout,mlx-lm-batch,trl",
            "--trl-python",
            str(tmp_path / "no-such-python"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))

    probe = report["machine"]["mlx"]
    assert probe["status"] == "ok", probe
    assert probe["device"] and probe["blas"] and probe["copy_gb_s"]["numpy"] > 0 and probe["matmul_gflops"]["1024"] > 0

    tiny = report["shapes"]["tiny"]
    assert tiny["config"]["hidden_size"] == 128 and tiny["config"]["num_hidden_layers"] == 4
    assert tiny["floor"]["tok_s"] > 0
    results = tiny["results"]
    assert set(results) == {"ours-rollout", "mlx-lm-batch", "trl"}

    batch = results["mlx-lm-batch"]
    assert batch["status"] == "ok", batch
    assert batch["generated_tokens"] == 16 * 64  # every row forced to full length
    assert batch["tok_s"] > 0 and batch["vs_batch_generate"] == 1.0 and batch["peak_rss_gib"] > 0
    assert results["ours-rollout"]["status"] in ("ok", "not available"), results["ours-rollout"]
    if results["ours-rollout"]["status"] == "ok":
        assert results["ours-rollout"]["generated_tokens"] == 16 * 64
    assert results["trl"]["status"] == "skipped" and "no-such-python" in results["trl"]["note"]

    table = capsys.readouterr().out
    assert "mlx-lm batch_generate" in table and "decode floor" in table and "not measured:" in table


def test_decode_floor_of_the_qwen3_0_6b_shape(bench):
    from mlx_grpo.modelgen import qwen3_config

    config = qwen3_config(**bench.SHAPES["qwen3-0.6b"].model)
    assert bench.weights_per_token(config) == pytest.approx(596e6, rel=0.01)  # Qwen3-0.6B: 0.6B, tied
    probe = {"copy_gb_s": {"numpy": 25.0, "mlx": 2.0}, "matmul_gflops": {"2048": 200.0}}
    floor = bench.decode_floor(config, 16, probe)
    assert floor["gb_per_step"] == pytest.approx(2.38, rel=0.01)  # the "2.4 GB per step"
    assert floor["tok_s"] == pytest.approx(16 / max(2.385 / 25, 19.08 / 200), rel=0.01)  # ~160 tok/s
