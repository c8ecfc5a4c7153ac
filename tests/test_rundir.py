"""The run directory: atomic writes, the logs, the reader, and one writer at a time.

The lock tests at the end start real `python -m mlx_grpo train` processes on the tiny model and
order them by signals, not by timing: a holder is found by the pid it writes into the lock file,
then SIGSTOPped (it keeps its lock) while the other commands run against its run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_export import tree_hash
from test_faults import assert_same_adapters, read_metrics, settings, start, train_argv

from mlx_grpo import rundir
from mlx_grpo.config import TrainConfig
from mlx_grpo.errors import UserError
from mlx_grpo.trainer import train

STEPS = 6  # of the runs started here (the tiny model: a fraction of a second a step)
ME = f"pid {os.getpid()} on {socket.gethostname()}"


# --- files ---------------------------------------------------------------------------------------


def test_write_json_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "summary.json"
    rundir.write_json(path, {"step": 1})
    rundir.write_json(path, {"step": 2})
    assert json.loads(path.read_text()) == {"step": 2}
    with pytest.raises(TypeError):
        rundir.write_json(path, {"step": object()})  # fails before the file is touched
    assert json.loads(path.read_text()) == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_truncate_after_keeps_earlier_steps_and_drops_a_torn_line(tmp_path):
    path = tmp_path / rundir.METRICS
    rundir.append_jsonl(path, [{"step": s} for s in (1, 2, 3)])
    with open(path, "a") as f:
        f.write('{"step": 4, "rew')
    assert rundir.truncate_after(path, 2) == [{"step": 1}, {"step": 2}]
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert rundir.truncate_after(tmp_path / "absent.jsonl", 2) == [] and not (tmp_path / "absent.jsonl").exists()


def test_read_run_of_a_run_without_adapters_yet(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text(json.dumps({"model": "Qwen/Qwen3-0.6B", "max_steps": 5}))
    rundir.append_jsonl(run / rundir.METRICS, [{"step": 1, "reward": 0.5}])
    read = rundir.read_run(run, adapters=False)
    assert (read.base_model, read.adapter_config, read.train_config["max_steps"]) == ("Qwen/Qwen3-0.6B", None, 5)
    assert read.metrics == [{"step": 1, "reward": 0.5}] and read.completions == []
    with pytest.raises(UserError, match="no adapters.safetensors"):
        rundir.read_run(run)
    (run / rundir.CONFIG).write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        rundir.read_run(run, adapters=False)


# --- the lock, in one process (flock conflicts between two open files of one process too) ------


def test_a_held_run_dir_is_refused_with_the_holders_pid_and_host(tmp_path):
    run = tmp_path / "runs" / "x"
    with rundir.acquire_lock(run) as lock:
        assert json.loads(lock.path.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(UserError, match="is in use") as refused:
            rundir.acquire_lock(run)
        assert ME in str(refused.value) and "\n" not in str(refused.value)
        (run / rundir.METRICS).write_text('{"step": 1}\n')
    assert [p.name for p in run.iterdir()] == [rundir.METRICS]  # the lock file goes with the lock
    rundir.acquire_lock(run).release()  # and the folder is free again


def test_a_start_that_writes_nothing_leaves_nothing(tmp_path):
    rundir.acquire_lock(tmp_path / "a" / "b" / "c").release()
    assert list(tmp_path.iterdir()) == []  # the folders it made are removed with the lock file
    mine = tmp_path / "mine"
    mine.mkdir()
    rundir.acquire_lock(mine).release()
    assert mine.is_dir() and list(mine.iterdir()) == []  # a folder it did not make stays


def test_a_stale_lock_file_is_no_run_no_clutter_and_no_obstacle(tmp_path):
    """A killed run may leave its lock file: it must not count as a run or as a file of the user's."""
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK).write_text('{"pid": 1, "host": "gone"}')
    with rundir.acquire_lock(run):
        assert rundir.prepare_run_dir(run, {}, resume=False, overwrite=False) is None
        with pytest.raises(UserError, match="nothing to resume"):
            rundir.prepare_run_dir(run, {}, resume=True, overwrite=False)
        (run / "notes.txt").write_text("mine")
        with pytest.raises(UserError, match="is not empty and does not hold a run"):
            rundir.prepare_run_dir(run, {}, resume=False, overwrite=False)


def test_overwrite_clears_the_run_but_not_the_lock_it_holds(tmp_path):
    run = tmp_path / "run"
    with rundir.acquire_lock(run) as lock:
        for name in (rundir.CONFIG, rundir.METRICS, rundir.COMPLETIONS, rundir.SUMMARY, rundir.ADAPTER_WEIGHTS):
            (run / name).write_text("{}")
        for folder in (rundir.CHECKPOINTS, rundir.PLOTS, rundir.TENSORBOARD):
            (run / folder).mkdir()
        rundir.clear_run_dir(run)
        assert [p.name for p in run.iterdir()] == [rundir.LOCK] and lock.path.is_file()
        with pytest.raises(UserError, match=ME):
            rundir.acquire_lock(run)


def test_a_failed_trainer_start_releases_the_lock_and_writes_nothing(tiny_model_path, tmp_path):
    config = TrainConfig(
        model=str(tiny_model_path), dataset=str(tmp_path / "absent.jsonl"), output_dir=str(tmp_path / "run")
    )
    with pytest.raises(UserError, match="no such file"):  # raised after the lock was taken
        train(config, progress=False)
    assert list(tmp_path.iterdir()) == []
    rundir.acquire_lock(tmp_path / "run").release()


# --- the lock, across real processes ---------------------------------------------------------


@pytest.mark.slow
def test_the_os_drops_the_lock_of_a_killed_process(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mlx_grpo import rundir; rundir.acquire_lock(sys.argv[1]); print(flush=True); time.sleep(600)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        holder.stdout.readline()  # locked
        with pytest.raises(UserError, match=f"pid {holder.pid} on "):
            rundir.acquire_lock(run)
    finally:
        holder.kill()
        holder.wait()
    assert (run / rundir.LOCK).exists()  # a SIGKILL leaves the file, not the lock:
    rundir.acquire_lock(run).release()


@pytest.fixture(scope="module")
def reward(spaces_reward) -> str:
    return spaces_reward


def argv(model, run, reward, *extra) -> list[str]:
    return train_argv(model, run, reward, *extra, max_steps=STEPS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path, reward):
    """A run never interrupted nor contended, started in the background (joined on first use)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = start(argv(tiny_model_path, out, reward))

    def join() -> Path:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return out

    yield join
    proc.kill()
    proc.communicate()


def wait_for_holder(run: Path, *procs: subprocess.Popen) -> int:
    """The pid that holds `run`'s lock, once it has written it there."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((run / rundir.LOCK).read_text())["pid"]
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    raise AssertionError("no process took the lock")


@contextlib.contextmanager
def paused(pid: int):
    """The process stopped (it keeps its lock and open files) for the block."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def assert_refused(code: int, err: str, holder: int) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "is in use" in err and f"pid {holder} on {socket.gethostname()}" in err, err


@pytest.mark.slow
def test_two_fresh_starts_racing_on_a_missing_folder_one_wins(tiny_model_path, tmp_path, reward, reference):
    run = tmp_path / "missing" / "run"
    procs = [start(argv(tiny_model_path, run, reward)) for _ in range(2)]
    try:
        holder = wait_for_holder(run, *procs)
        winner, loser = sorted(procs, key=lambda p: p.pid != holder)
        with paused(holder):  # so that the loser surely meets the lock, not a finished run
            _, err = loser.communicate(timeout=120)
            assert_refused(loser.returncode, err, holder)
        _, err = winner.communicate(timeout=300)
        assert winner.returncode == 0, err
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    assert [r["step"] for r in read_metrics(run)] == list(range(1, STEPS + 1))
    assert_same_adapters(run, reference())
    assert not (run / rundir.LOCK).exists()


@pytest.mark.slow
def test_a_sigkilled_holder_leaves_no_lock_and_resume_ends_like_a_straight_run(
    tiny_model_path, tmp_path, reward, reference
):
    run = tmp_path / "run"
    command = argv(tiny_model_path, run, reward)
    killed = start(command)
    try:
        while not (run / rundir.CHECKPOINTS / "step-000002").is_dir():
            assert killed.poll() is None, killed.communicate()[1]
            time.sleep(0.001)
    finally:
        killed.kill()
        killed.communicate()
    assert killed.returncode == -signal.SIGKILL and (run / rundir.LOCK).exists()
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(run)] == list(range(1, STEPS + 1))
    assert_same_adapters(run, reference())


@pytest.mark.slow
def test_a_second_train_on_a_running_run_changes_nothing_and_readers_still_work(tiny_model_path, tmp_path, reward, cli):
    """The issue's case: `train --resume` typed twice. The second exits 2 with one line, and so
    do `--overwrite` and a fresh start, each leaving every byte of the run as it was; `report`,
    `eval --adapter-path` and `fuse` read the run meanwhile."""
    run = tmp_path / "run"
    command = argv(tiny_model_path, run, reward)
    train(TrainConfig(**settings(tiny_model_path, run, reward, max_steps=2)), progress=False)  # a checkpoint to resume
    first = start(command + ["--resume"])
    try:
        holder = wait_for_holder(run, first)
        with paused(holder):
            before = tree_hash(run)
            second = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
            assert_refused(second.returncode, second.stderr, holder)
            for extra in (["--overwrite"], []):  # in this process, through the same entry point
                code, _, err = cli(*command[3:], *extra)
                assert_refused(code, err, holder)
            assert tree_hash(run) == before
            code, _, err = cli("report", run)
            assert code == 0 and (run / rundir.REPORT).is_file(), err
            code, out, err = cli(
                "eval",
                "--model",
                tiny_model_path,
                "--adapter-path",
                run,
                "--num-samples",
                2,
                "--max-tokens",
                4,
                "--quiet",
            )
            assert code == 0 and "accuracy" in out, err
            code, _, err = cli("fuse", run, "--output", tmp_path / "fused")
            assert code == 0, err
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        first.kill()
        first.communicate()
    assert [r["step"] for r in read_metrics(run)] == list(range(1, STEPS + 1))  # each step once, in order
