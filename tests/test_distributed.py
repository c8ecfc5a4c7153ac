"""Data-parallel training on the ring backend: two processes on localhost against one.

Each test starts real ranks (`tests/dist_worker.py` or the CLI) with MLX_RANK / MLX_HOSTFILE, as
`mlx.launch --backend ring` does, and compares what they write with a single process's run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_grpo.distributed import shard
from mlx_grpo.episodes import task_indices

ROOT = Path(__file__).resolve().parents[1]
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
    sockets = [socket.socket() for _ in range(world)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    hosts = [[f"127.0.0.1:{s.getsockname()[1]}"] for s in sockets]
    for s in sockets:
        s.close()
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
    outputs = [p.communicate(timeout=600) for p in procs]
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


# Dynamic sampling over ranks. The "marked" reward is mixed exactly in the groups of the tasks in
# MARKED (1.0 on a group's first row, 0.0 on the rest), so which groups are informative is planned:
# in each step's rounds, the groups at these positions (rank 0 samples each round's first half).
MARKED_REWARD = """
MARKED = {marked!r}

def marked(completions, targets, nums_list, **kw):
    out, previous = [], None
    for task in zip(map(int, targets), map(tuple, nums_list)):
        out.append(1.0 if task in MARKED and task != previous else 0.0)
        previous = task
    return out
"""
PLAN = {1: [[2], []], 2: [[], []], 3: [[0, 1, 2], [0, 3]]}  # step -> informative groups of rounds 0, 1
KEPT = [1, 0, 4]  # step 1: rank 1's one group, the cap; step 2: none, round 0 as sampled; step 3: B
RANK_ROWS = {1: [0, 4], 2: [8, 8], 3: [12, 4]}  # rows each rank trains on (G = 4)


def dynamic_settings(model_path, out, reward, **overrides) -> dict:
    dynamic = dict(dynamic_sampling=True, dynamic_sampling_signal="marked", max_sampling_rounds=2)
    return settings(model_path, out, reward, num_samples=80, seed=4, **dynamic, **overrides)


def planned_tasks(train_tasks, batch: int, seed: int) -> tuple[set, set]:
    """The (target, nums) of the tasks PLAN marks informative, and of those it marks flat."""
    from mlx_grpo.dynamic import round_draw, round_size

    marked, flat = set(), set()
    for step, rounds in PLAN.items():
        rows, used, kept, sampled, surplus = task_indices(step, batch, len(train_tasks), seed), set(), 0, 0, 0
        for round_, informative in enumerate(rounds):
            if round_:
                count = round_size(batch - kept, kept + surplus, sampled, batch)
                rows, _ = round_draw(seed, step, round_, count, len(train_tasks), used)
            used.update(rows)
            for i, row in enumerate(rows):
                (marked if i in informative else flat).add((train_tasks[row].target, tuple(train_tasks[row].nums)))
            take = informative[: batch - kept]
            kept, sampled, surplus = kept + len(take), sampled + len(rows), surplus + len(informative) - len(take)
    return marked, flat


@pytest.fixture(scope="module")
def marked_reward(tmp_path_factory, tiny_model_path) -> str:
    from mlx_grpo.countdown.data import load_tasks, split_tasks

    c = dynamic_settings(tiny_model_path, "unused", "unused")
    train, _ = split_tasks(load_tasks(c["dataset"], seed=c["seed"], num_samples=c["num_samples"]), c["test_size"])
    marked, flat = planned_tasks(train, c["batch_size"], c["seed"])
    assert not marked & flat  # no task is planned both ways (it holds for this seed)
    path = tmp_path_factory.mktemp("reward") / "marked.py"
    path.write_text(MARKED_REWARD.format(marked=marked))
    return f"{path}:marked"


@pytest.fixture(scope="module")
def dynamic_straight(tiny_model_path, tmp_path_factory, marked_reward) -> Path:
    """One rank, dynamic sampling, each round sampled in calls of 2 groups (as 2 ranks sample it)."""
    out = tmp_path_factory.mktemp("straight")
    config = dynamic_settings(tiny_model_path, out / "run", marked_reward)
    run_worker(config, out / "{rank}.safetensors", groups_per_call=2, record=str(out / "record-{rank}.json"))
    return out


def rank_rows(out: Path, world: int) -> dict[int, list[int]]:
    records = [json.loads((out / f"record-{r}.json").read_text()) for r in range(world)]
    return {int(step): [rec["rows"][step] for rec in records] for step in records[0]["rows"]}


def assert_planned_sampling(run: Path) -> None:
    metrics = read_jsonl(run / "metrics.jsonl")[1:]  # after the step-0 evaluation
    assert [m["sampling/groups_kept"] for m in metrics] == KEPT
    assert [m["sampling/rounds"] for m in metrics] == [2, 2, 2]
    assert [m["sampling/prompts"] for m in metrics] == [4 + 12, 4 + 16, 4 + 4]  # the round sizes it planned


@pytest.mark.slow
def test_two_rank_dynamic_sampling_equals_one_rank_with_kept_groups_spread_unevenly(
    tiny_model_path, tmp_path, marked_reward, dynamic_straight
):
    config = dynamic_settings(tiny_model_path, tmp_path / "run", marked_reward)
    record = str(tmp_path / "record-{rank}.json")
    run_worker(config, tmp_path / "{rank}.safetensors", world=2, groups_per_call=2, record=record)

    assert rank_rows(tmp_path, 2) == RANK_ROWS  # rank 0 holds no row at step 1
    assert rank_rows(dynamic_straight, 1) == {step: [sum(rows)] for step, rows in RANK_ROWS.items()}
    assert_planned_sampling(tmp_path / "run")
    start = initial_adapters(tiny_model_path, tmp_path, marked_reward, seed=4)
    want = load(dynamic_straight / "run" / "adapters.safetensors")
    for rank in (0, 1):
        assert_same_adapters(load(tmp_path / f"{rank}.safetensors"), want, start)
    # the same rows, in rank order (a rank's rounds, then the next rank's): means may round differently
    got, straight = (read_jsonl(d / "run" / "metrics.jsonl") for d in (tmp_path, dynamic_straight))
    assert_same_metrics(got, straight, rows_rel=1e-12)
    completions = [read_jsonl(d / "run" / "completions.jsonl") for d in (tmp_path, dynamic_straight)]
    assert sorted(c["completion"] for c in completions[0]) == sorted(c["completion"] for c in completions[1])


@pytest.mark.slow
def test_two_rank_dynamic_run_resumed_on_one_rank_ends_where_a_straight_run_ends(
    tiny_model_path, tmp_path, marked_reward, dynamic_straight
):
    first = dynamic_settings(tiny_model_path, tmp_path / "run", marked_reward, max_steps=2)
    run_worker(first, tmp_path / "first-{rank}.safetensors", world=2, groups_per_call=2)
    run_worker({**first, "max_steps": 3}, tmp_path / "{rank}.safetensors", groups_per_call=2, resume=True)

    start = initial_adapters(tiny_model_path, tmp_path, marked_reward, seed=4)
    want = load(dynamic_straight / "run" / "adapters.safetensors")
    assert_same_adapters(load(tmp_path / "run" / "adapters.safetensors"), want, start)
    got, straight = (read_jsonl(d / "run" / "metrics.jsonl") for d in (tmp_path, dynamic_straight))
    assert_same_metrics(got, straight, rows_rel=1e-12)


@pytest.mark.slow
def test_two_ranks_sampling_each_share_in_one_call_keep_the_groups_one_rank_keeps(
    tiny_model_path, tmp_path, marked_reward, dynamic_straight
):
    config = dynamic_settings(tiny_model_path, tmp_path / "run", marked_reward)  # as the trainer samples
    run_worker(config, tmp_path / "{rank}.safetensors", world=2, record=str(tmp_path / "record-{rank}.json"))
    assert rank_rows(tmp_path, 2) == RANK_ROWS
    assert_planned_sampling(tmp_path / "run")
    got, straight = (read_jsonl(d / "run" / "metrics.jsonl") for d in (tmp_path, dynamic_straight))
    sampling = [
        [{k: v for k, v in m.items() if k.startswith("sampling/") and "_s_" not in k} for m in ms]
        for ms in (got, straight)
    ]
    assert sampling[0] == sampling[1]


@pytest.mark.slow
def test_lora_dropout_draws_other_masks_on_each_rank_and_repeats_them_on_resume(
    tiny_model_path, tmp_path, spaces_reward
):
    config = settings(
        tiny_model_path, tmp_path / "straight", spaces_reward, lora_dropout=0.1, max_steps=2, eval_every=0
    )
    run_worker(config, tmp_path / "straight-{rank}.safetensors", world=2, record=str(tmp_path / "straight-{rank}.json"))
    stopped = {**config, "output_dir": str(tmp_path / "stopped"), "max_steps": 1}
    run_worker(stopped, tmp_path / "first-{rank}.safetensors", world=2)
    record = str(tmp_path / "resumed-{rank}.json")
    run_worker(
        {**stopped, "max_steps": 2}, tmp_path / "resumed-{rank}.safetensors", world=2, resume=True, record=record
    )

    straight = [json.loads((tmp_path / f"straight-{r}.json").read_text())["keys"] for r in (0, 1)]
    for step in ("1", "2"):  # the key each dropout draw splits: equal keys would draw equal masks
        assert len(straight[0][step]) == len(straight[1][step]) > 0
        assert not {tuple(k) for k in straight[0][step]} & {tuple(k) for k in straight[1][step]}
    for rank in (0, 1):
        resumed = json.loads((tmp_path / f"resumed-{rank}.json").read_text())["keys"]
        assert resumed == {"2": straight[rank]["2"]}
        got, want = (load(tmp_path / f"{run}-{rank}.safetensors") for run in ("resumed", "straight"))
        assert all(np.array_equal(got[k], want[k]) for k in want)


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
