"""Data-parallel training on the ring backend: two processes on localhost against one.

Each test starts real ranks (`tests/dist_worker.py` or the CLI) with MLX_RANK / MLX_HOSTFILE, as
`mlx.launch --backend ring` does (`tests/ring.py`), and compares what they write with a single
process's run. Dynamic sampling over ranks: tests/test_distributed_dynamic.py.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from ring import (
    ROOT,
    TIMINGS,
    assert_same_adapters,
    assert_same_metrics,
    initial_adapters,
    load,
    read_jsonl,
    ring_env,
    run_worker,
    settings,
    start,
)

from mlx_grpo.distributed import shard
from mlx_grpo.episodes import step_seed, task_indices


def test_shards_are_whole_contiguous_blocks_in_rank_order():
    for count in (1, 4, 5, 8):
        for world in (1, 2, 3):
            blocks = [shard(count, r, world) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(count))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    # the tasks of a step do not depend on the number of ranks: each rank takes a block of them
    step_tasks = task_indices(3, 4, 30, seed=1)
    assert [step_tasks[i] for r in range(2) for i in shard(4, r, 2)] == step_tasks


@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_the_same_global_batch(tiny_model_path, tmp_path, spaces_reward):
    one, two = tmp_path / "one", tmp_path / "two"
    run_worker(settings(tiny_model_path, one, spaces_reward), tmp_path / "one-{rank}.safetensors", groups_per_call=2)
    run_worker(settings(tiny_model_path, two, spaces_reward), tmp_path / "two-{rank}.safetensors", world=2)

    start = initial_adapters(tiny_model_path, tmp_path, spaces_reward)
    want = load(one / "adapters.safetensors")
    assert_same_adapters(load(two / "adapters.safetensors"), want, start)
    for rank in (0, 1):  # every rank holds the adapters rank 0 saved
        assert_same_adapters(load(tmp_path / f"two-{rank}.safetensors"), want, start)
    np.testing.assert_array_equal(
        *[
            np.concatenate([v.ravel() for _, v in sorted(load(tmp_path / f"two-{r}.safetensors").items())])
            for r in (0, 1)
        ]
    )
    assert_same_metrics(read_jsonl(two / "metrics.jsonl"), read_jsonl(one / "metrics.jsonl"))
    completions = [read_jsonl(d / "completions.jsonl") for d in (two, one)]
    assert [c["completion"] for c in completions[0]] == [c["completion"] for c in completions[1]]
    assert len(completions[0]) == 3 * 4 * 4  # every rank's rows, written once
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-000002", "step-000003"]


@pytest.mark.slow
def test_two_rank_run_resumed_on_one_rank_ends_where_a_straight_run_ends(tiny_model_path, tmp_path, spaces_reward):
    straight, moved = tmp_path / "straight", tmp_path / "moved"
    config = settings(tiny_model_path, straight, spaces_reward, max_steps=3, eval_every=0)
    run_worker(config, tmp_path / "straight-{rank}.safetensors", groups_per_call=2)
    first = {**config, "output_dir": str(moved), "max_steps": 2}
    run_worker(first, tmp_path / "first-{rank}.safetensors", world=2)
    run_worker({**first, "max_steps": 3}, tmp_path / "moved-{rank}.safetensors", groups_per_call=2, resume=True)

    start = initial_adapters(tiny_model_path, tmp_path, spaces_reward)
    assert_same_adapters(load(moved / "adapters.safetensors"), load(straight / "adapters.safetensors"), start)
    # (the first run's last step evaluated, as every run's last step does)
    got, want = read_jsonl(moved / "metrics.jsonl"), read_jsonl(straight / "metrics.jsonl")
    assert_same_metrics(got, want, ignore=(*TIMINGS, "eval/"))


@pytest.mark.slow
def test_lora_dropout_draws_other_masks_on_each_rank_from_the_step_and_rank_alone(
    tiny_model_path, tmp_path, spaces_reward
):
    config = settings(tiny_model_path, tmp_path / "run", spaces_reward, lora_dropout=0.1, max_steps=2, eval_every=0)
    run_worker(config, tmp_path / "{rank}.safetensors", world=2, record=str(tmp_path / "record-{rank}.json"))
    keys = [json.loads((tmp_path / f"record-{r}.json").read_text())["keys"] for r in (0, 1)]
    for step in (1, 2):  # the key each dropout draw splits: equal keys would draw equal masks
        assert len(keys[0][str(step)]) == len(keys[1][str(step)]) > 0
        assert not {tuple(k) for k in keys[0][str(step)]} & {tuple(k) for k in keys[1][str(step)]}
        for rank in (0, 1):  # each step starts from (seed, step, the rank's first group): a resumed step repeats it
            first_group = shard(config["batch_size"], rank, 2).start
            seeded = np.array(mx.random.key(step_seed(config["seed"], step, first_group))).tolist()
            assert keys[rank][str(step)][0] == seeded


def cli_args(model_path, out, reward, *extra) -> list[str]:
    args = [sys.executable, "-m", "mlx_grpo", "train", "--quiet", "--model", str(model_path), "--dataset", "generate"]
    args += ["--reward", "format", "--reward", "equation", "--reward", reward, "--num-samples", "40"]
    args += ["--batch-size", "4", "--num-generations", "4", "--max-completion-length", "12", "--eval-every", "0"]
    args += ["--temperature", "1.0", "--top-p", "1.0", "--top-k", "0"]
    return args + ["--save-every", "2", "--output-dir", str(out), "--seed", "3", *extra]


def start_pair_until_checkpoint(args: list[str], out: Path, env: dict | None = None) -> list[subprocess.Popen]:
    """Two ranks of `args`, returned once rank 0 has saved step 2 (the job is then in step 3 or later)."""
    procs = [start(args, {**e, **(env or {})}) for e in ring_env(2)]
    deadline = time.monotonic() + 300  # only catches a blow-up: a few seconds here
    while not (out / "checkpoints" / "step-000002").is_dir():
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return procs


def assert_one_line_exit(proc: subprocess.Popen, code: int, start_of_line: str) -> None:
    """The process ends with `code`, its last line of stderr the reason, and no traceback (MLX's
    own "[ring] ..." socket lines may come before it)."""
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert err.splitlines()[-1].startswith(start_of_line), err
    assert "Traceback" not in err


def assert_resumes(model_path, out, reward) -> None:
    """The last checkpoint loads: one process continues the run from it for one more step."""
    last = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    args = cli_args(model_path, out, reward, "--max-steps", str(last + 1), "--resume")
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert read_jsonl(out / "metrics.jsonl")[-1]["step"] == last + 1


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_with_one_line_and_the_checkpoint_intact(tiny_model_path, tmp_path, spaces_reward):
    out = tmp_path / "run"
    rank0, rank1 = start_pair_until_checkpoint(cli_args(tiny_model_path, out, spaces_reward, "--max-steps", "500"), out)
    rank1.send_signal(signal.SIGKILL)
    rank1.wait()
    assert_one_line_exit(rank0, 3, "error: rank 0: another rank of the job is gone")
    assert_resumes(tiny_model_path, out, spaces_reward)


@pytest.mark.slow
def test_a_hung_rank_ends_the_job_within_the_peer_timeout(tiny_model_path, tmp_path, spaces_reward):
    out = tmp_path / "run"
    args = cli_args(tiny_model_path, out, spaces_reward, "--max-steps", "500")
    rank0, rank1 = start_pair_until_checkpoint(args, out, env={"MLX_GRPO_PEER_TIMEOUT": "10"})
    rank1.send_signal(signal.SIGSTOP)  # alive, its sockets open, answering nothing
    try:
        assert_one_line_exit(rank0, 3, "error: rank 0: no answer from the other ranks for 10 s")
    finally:
        rank1.kill()
        rank1.wait()
    assert_resumes(tiny_model_path, out, spaces_reward)


@pytest.mark.slow
def test_mlx_launch_runs_the_cli_as_one_job_that_rank_0_writes(tiny_model_path, tmp_path, spaces_reward):
    out = tmp_path / "run"
    with socket.socket() as s:  # the ring listens on this port and the next
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [str(Path(sys.executable).parent / "mlx.launch"), "-n", "2", "--backend", "ring", "-p", str(port), "--"]
    cli = [str(Path(sys.executable).parent / "mlx-grpo"), *cli_args(tiny_model_path, out, spaces_reward)[3:]]
    done = subprocess.run([*launch, *cli, "--max-steps", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0 and "exited with code" not in done.stderr, done.stderr
    assert done.stdout.count("final metrics") == 1  # rank 0 reports
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1]
    assert len(read_jsonl(out / "completions.jsonl")) == 4 * 4  # both ranks' groups, written once
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_a_batch_that_does_not_split_into_whole_groups_is_one_line_on_every_rank(
    tiny_model_path, tmp_path, spaces_reward
):
    args = cli_args(tiny_model_path, tmp_path / "run", spaces_reward)
    args[args.index("--batch-size") + 1] = "3"
    procs = [start(args, env) for env in ring_env(2)]
    for proc in procs:
        assert_one_line_exit(proc, 2, "error: batch_size 3 must be a multiple of the 2 ranks")
    assert not (tmp_path / "run").exists()  # checked before anything is written


@pytest.mark.slow
def test_a_peer_timeout_that_is_not_a_number_is_one_line_on_every_rank(tiny_model_path, tmp_path, spaces_reward):
    args = cli_args(tiny_model_path, tmp_path / "run", spaces_reward)
    procs = [start(args, {**env, "MLX_GRPO_PEER_TIMEOUT": "soon"}) for env in ring_env(2)]
    for proc in procs:
        assert_one_line_exit(proc, 2, "error: MLX_GRPO_PEER_TIMEOUT must be a number of seconds (got 'soon')")


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_a_ctrl_c_landing_after_a_steps_gather_stops_every_rank_after_the_same_step(
    tiny_model_path, tmp_path, spaces_reward, world
):
    # On one rank a Ctrl-C that lands after step 2's gather stops it after step 2 at once; on two,
    # only the rank it reached knows until step 3's gather, so both stop after step 3 (stopping
    # that rank alone after step 2 left the other waiting in step 3's gather for a peer gone).
    config = settings(tiny_model_path, tmp_path / "run", spaces_reward, max_steps=6)
    interrupted = str(tmp_path / "interrupted-{rank}.json")
    run_worker(
        config,
        tmp_path / "{rank}.safetensors",
        world=world,
        interrupt={"rank": world - 1, "step": 2},
        interrupted=interrupted,
    )
    stopped = [json.loads(Path(interrupted.format(rank=r)).read_text())["step"] for r in range(world)]
    assert stopped == [1 + world] * world
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["step"] == 1 + world


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step_with_a_checkpoint(
    tiny_model_path, tmp_path, spaces_reward
):
    out = tmp_path / "run"
    rank0, rank1 = start_pair_until_checkpoint(cli_args(tiny_model_path, out, spaces_reward, "--max-steps", "500"), out)
    rank1.send_signal(signal.SIGINT)
    for proc in (rank0, rank1):
        assert_one_line_exit(proc, 130, "interrupted after step")
    last = read_jsonl(out / "metrics.jsonl")[-1]["step"]
    assert (out / "checkpoints" / f"step-{last:06d}").is_dir()
    assert_resumes(tiny_model_path, out, spaces_reward)
