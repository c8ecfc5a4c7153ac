"""Faults injected into real training runs: SIGKILL at chosen moments then resume, Ctrl-C,
non-finite updates, a full or read-only disk, and the memory-limit guard.

The kill and Ctrl-C tests start `python -m mlx_grpo train` on the tiny model and watch its run
directory: each moment is found by what the run has written (a checkpoint's temp folder, a new
checkpoint, a metrics line), plus a delay measured from the run's own step timings. No hook in the
code under test.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest

import mlx_grpo.cli as cli_module
from mlx_grpo import trainer as trainer_module
from mlx_grpo.checkpoint import latest_checkpoint, list_checkpoints
from mlx_grpo.config import TrainConfig
from mlx_grpo.errors import UserError
from mlx_grpo.rundir import CHECKPOINTS
from mlx_grpo.trainer import train

STEPS = 14  # of the runs that are killed and resumed


@pytest.fixture(scope="module")
def reward(spaces_reward) -> str:
    return spaces_reward


def settings(model, out, reward, **overrides) -> dict:
    return {
        "model": str(model),
        "dataset": "generate",
        "rewards": ["format", "equation", reward],
        "num_samples": 40,
        "test_size": 0.2,
        "batch_size": 2,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": STEPS,
        "learning_rate": 5e-3,
        "output_dir": str(out),
        "eval_every": 0,
        "eval_samples": 2,
        "save_every": 2,
        "log_completions_every": 1,
        "seed": 3,
        **overrides,
    }


def train_argv(model, out, reward, *extra: str, **overrides) -> list[str]:
    """`python -m mlx_grpo train` with `settings(...)` as flags."""
    argv = [sys.executable, "-m", "mlx_grpo", "train", "--quiet", *extra]
    for key, value in settings(model, out, reward, **overrides).items():
        if key == "rewards":
            argv += [a for spec in value for a in ("--reward", spec)]
        else:
            argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def _cli(argv) -> int:
    """Exit code of `mlx-grpo ARGV` run in this process (its output goes to capfd)."""
    try:
        cli_module.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code
    return 0


def start(argv) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_metrics(run: Path) -> list[dict]:
    """Complete metrics lines (a line cut short by a kill is left out)."""
    rows = []
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def checkpoint_steps(run: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in list_checkpoints(run)]


# --- SIGKILL / resume --------------------------------------------------------------------------
# Each moment: (name, trigger). A trigger gets the run dir and what it held when the process
# started, and returns the seconds to wait before the kill once the moment has come, or None.


def _temp_folders(run: Path) -> set[str]:
    folder = run / CHECKPOINTS
    return {p.name for p in folder.iterdir() if p.name.startswith(".tmp-step-")} if folder.is_dir() else set()


def _tmp_checkpoint(run: Path, begin: dict):
    """A checkpoint's temp folder that this process made (its name holds the pid)."""
    return 0.0 if _temp_folders(run) - begin["temp"] else None


def _new_checkpoint(run: Path, begin: dict):
    return 0.0 if checkpoint_steps(run)[-1:] != begin["checkpoints"][-1:] else None


def _new_odd_step(run: Path, begin: dict):
    """The metrics of a step newer than any on disk at the start, not checkpointed (save_every is
    2), and after a first checkpoint exists; or None."""
    rows = read_metrics(run)
    return rows[-1] if rows and rows[-1]["step"] > max(begin["step"], 2) and rows[-1]["step"] % 2 else None


def _unsaved_metrics_line(run: Path, begin: dict):
    return None if _new_odd_step(run, begin) is None else 0.0


def _during(phase: str):
    """Half-way through the next step's generation or update, by the last step's own timings."""

    def trigger(run: Path, begin: dict):
        last = _new_odd_step(run, begin)
        if last is None:
            return None
        generate, update = last["time/generate"], last["time/update"]
        return generate / 2 if phase == "generate" else generate + update / 2

    return trigger


def _after(seconds: float):
    return lambda run, begin: seconds


MOMENTS = [
    ("metrics written, step not yet saved", _unsaved_metrics_line),
    ("checkpoint being written (temp folder)", _tmp_checkpoint),
    ("checkpoint renamed, adapters being published", _new_checkpoint),
    ("generation", _during("generate")),
    ("update", _during("update")),
    ("start-up of a resumed run (loading, truncating logs)", _after(1.0)),
]


def kill_at(argv, run: Path, trigger) -> tuple[int, str]:
    """Run `argv` until `trigger` fires, then SIGKILL it; return (exit code, stderr)."""
    rows = read_metrics(run)
    begin = {
        "checkpoints": checkpoint_steps(run),
        "step": max([r["step"] for r in rows], default=0),
        "temp": _temp_folders(run),
    }
    proc = start(argv)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < 120:
            delay = trigger(run, begin)
            if delay is not None:
                time.sleep(delay)
                proc.kill()
                break
            time.sleep(0.001)  # a checkpoint's temp folder lives a few ms (fsyncs included)
    finally:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


def check_after_kill(run: Path, model: Path) -> int:
    """What a kill must never break; returns the step of the latest complete checkpoint."""
    latest = latest_checkpoint(run)
    assert latest is not None
    for checkpoint in list_checkpoints(run):  # every folder named like a checkpoint is complete
        assert json.loads((checkpoint / "state.json").read_text())["step"] == int(checkpoint.name.split("-")[1])
        for name in ("adapters.safetensors", "optimizer.safetensors"):
            assert mx.load(str(checkpoint / name))
    mlx_lm.load(str(model), adapter_path=str(latest))
    published = run / "adapters.safetensors"
    assert published.exists()
    mlx_lm.load(str(model), adapter_path=str(run))  # the published adapters always load ...
    assert any(
        published.read_bytes() == (c / "adapters.safetensors").read_bytes()  # ... and are a checkpoint's
        for c in list_checkpoints(run)
    )
    return int(latest.name.split("-")[1])


def assert_same_adapters(a: Path, b: Path) -> None:
    wa, wb = mx.load(str(a / "adapters.safetensors")), mx.load(str(b / "adapters.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        np.testing.assert_array_equal(np.array(wa[k]), np.array(wb[k]), err_msg=k)


def assert_same_history(a: Path, b: Path) -> None:
    """Both runs logged steps 1..STEPS once each, with the same rewards and losses."""
    ra, rb = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, STEPS + 1))
    for x, y in zip(ra, rb):
        assert (x["reward"], x["loss"], x["grad_norm"]) == (y["reward"], y["loss"], y["grad_norm"]), x["step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path, reward):
    """An uninterrupted run with the same seed, started in the background (joined on first use)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = start(train_argv(tiny_model_path, out, reward))

    def join() -> Path:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return out

    yield join
    proc.kill()
    proc.communicate()


@pytest.mark.slow  # a real subprocess
def test_sigkill_at_six_moments_then_resume_ends_with_the_uninterrupted_adapters(
    tiny_model_path, tmp_path, reward, reference
):
    run = tmp_path / "run"
    argv = train_argv(tiny_model_path, run, reward)
    cycles = []
    for i, (moment, trigger) in enumerate(MOMENTS):
        code, err = kill_at(argv + (["--resume"] if i else []), run, trigger)
        assert code == -signal.SIGKILL, f"{moment}: the run ended before the kill ({code}): {err}"
        cycles.append((moment, check_after_kill(run, tiny_model_path), len(read_metrics(run))))
    print("\nkill/resume cycles (moment, latest checkpoint, metrics lines):", *cycles, sep="\n  ")
    assert cycles[-1][1] < STEPS  # the last resume still has work to do
    finished = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert_same_adapters(run, reference())
    assert_same_history(run, reference())
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]  # every kill's leftovers are cleared


def test_a_crash_while_deleting_a_checkpoint_never_leaves_a_partial_one_under_its_name(
    tiny_model, tmp_path, monkeypatch
):
    """A run dies half-way through deleting a checkpoint folder (pruning the oldest one, or
    replacing a step saved again): every folder named like a checkpoint must still be complete."""
    import mlx.optimizers as optim

    from mlx_grpo import checkpoint
    from mlx_grpo.model import add_lora

    model, _ = tiny_model
    adapter_config = add_lora(model, rank=2, scale=1.0)
    optimizer = optim.AdamW(learning_rate=1e-3)
    optimizer.init(model.trainable_parameters())
    for step in (1, 2, 3):
        checkpoint.save_checkpoint(tmp_path, step, model, adapter_config, optimizer, {})
    real_rmtree = shutil.rmtree

    def dies_half_way(path, *args, **kwargs):
        next(Path(path).iterdir()).unlink()
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after this line runs

    # Saving step 4 prunes step 1; then step 4 is saved again (as the end of a run does).
    for step, survivors in ((4, [2, 3, 4]), (4, [2, 3])):
        for leftover in (tmp_path / CHECKPOINTS).glob(".tmp-*"):
            real_rmtree(leftover)
        monkeypatch.setattr(checkpoint.shutil, "rmtree", dies_half_way)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save_checkpoint(tmp_path, step, model, adapter_config, optimizer, {})
        monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
        assert checkpoint_steps(tmp_path) == survivors
        for folder in list_checkpoints(tmp_path):
            assert sorted(p.name for p in folder.iterdir()) == [
                "adapter_config.json",
                "adapters.safetensors",
                "optimizer.safetensors",
                "state.json",
            ]
    checkpoint.save_checkpoint(tmp_path, 5, model, adapter_config, optimizer, {})
    assert checkpoint_steps(tmp_path) == [2, 3, 5]
    assert not list((tmp_path / CHECKPOINTS).glob(".*"))  # the next save clears what a crash left


# --- Ctrl-C --------------------------------------------------------------------------------------


@pytest.mark.slow  # a real subprocess
def test_ctrl_c_saves_exits_130_with_a_resume_hint_and_resume_finishes(tiny_model_path, tmp_path, reward, reference):
    run = tmp_path / "run"
    argv = train_argv(tiny_model_path, run, reward)
    proc = start(argv)
    while proc.poll() is None and not read_metrics(run):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    step = int(message.split("interrupted after step ")[1].split(";")[0])
    assert f"--output-dir {run} --resume" in message
    assert 1 <= step < STEPS and checkpoint_steps(run)[-1] == step  # saved at once, even between save steps
    assert [r["step"] for r in read_metrics(run)] == list(range(1, step + 1))
    resumed = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(run)] == list(range(1, STEPS + 1))
    assert_same_adapters(run, reference())


def test_ctrl_c_before_training_starts_is_one_line_exit_130(monkeypatch, capfd):
    def interrupted():
        raise KeyboardInterrupt  # Ctrl-C while the commands are imported

    monkeypatch.setattr(cli_module, "_register", interrupted)
    assert _cli(["train"]) == 130
    err = capfd.readouterr().err
    assert err.strip() == "aborted" and "Traceback" not in err


# --- non-finite updates ---------------------------------------------------------------------------

FLAKY = """
calls = [0]

def flaky(completions, **kw):
    '''The share of spaces for two steps, then a reward too large for float32: the advantages, the
    loss and the gradients turn NaN.'''
    calls[0] += 1
    return [1e300 if calls[0] > 2 else c.count(' ') / max(len(c), 1) for c in completions]
"""


def test_non_finite_updates_stop_the_run_with_the_last_good_checkpoint_intact(tiny_model_path, tmp_path):
    (tmp_path / "flaky.py").write_text(FLAKY)
    run = tmp_path / "run"
    config = TrainConfig(
        **settings(tiny_model_path, run, f"{tmp_path / 'flaky.py'}:flaky", max_steps=8, save_every=1, max_bad_steps=3)
    )
    with pytest.raises(UserError, match=r"3 consecutive updates had non-finite .* checkpoint step-000004 is intact"):
        train(config, progress=False)
    rows = read_metrics(run)
    assert [r["skipped"] for r in rows] == [False, False, True, True, True]
    assert checkpoint_steps(run) == [2, 3, 4]  # skipped steps leave the weights as step 2 made them
    good = mx.load(str(run / CHECKPOINTS / "step-000002" / "adapters.safetensors"))
    for checkpoint in (run / CHECKPOINTS / "step-000004", run):
        weights = mx.load(str(checkpoint / "adapters.safetensors"))
        for k, v in good.items():
            np.testing.assert_array_equal(np.array(weights[k]), np.array(v))
            assert np.isfinite(np.array(v)).all()
        model, tokenizer = mlx_lm.load(str(tiny_model_path), adapter_path=str(checkpoint))
        assert np.isfinite(np.array(model(mx.array([tokenizer.encode("44 + 19")])))).all()


# --- a full or read-only disk ---------------------------------------------------------------------


def test_disk_full_while_saving_is_one_line_exit_2_and_the_previous_checkpoint_is_intact(
    tiny_model_path, tmp_path, reward, monkeypatch, capfd
):
    """ENOSPC from the safetensors writer at the third save (an OS fault injected at its boundary)."""
    saves = []
    real_save = mx.save_safetensors

    def save(path, arrays, *args, **kwargs):
        saves.append(path)
        if len(saves) > 4:  # two files per checkpoint: checkpoints 1 and 2 succeed
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_save(path, arrays, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", save)
    run = tmp_path / "run"
    argv = train_argv(tiny_model_path, run, reward, save_every=1)[3:]
    code = _cli(argv)
    err = capfd.readouterr().err
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert error_lines == [err.splitlines()[-1]]
    assert "No space left on device" in error_lines[0] and "step-000002 is intact" in error_lines[0]
    assert "Traceback" not in err
    assert checkpoint_steps(run) == [1, 2]
    assert not list((run / CHECKPOINTS).glob(".tmp-*"))
    mlx_lm.load(str(tiny_model_path), adapter_path=str(run / CHECKPOINTS / "step-000002"))
    published = (run / "adapters.safetensors").read_bytes()
    assert published == (run / CHECKPOINTS / "step-000002" / "adapters.safetensors").read_bytes()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs of our own (needs root, as in CI's container); skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk: Path) -> None:
    with open(disk / "ballast", "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


def _remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


@pytest.mark.slow  # a real subprocess
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_disk_that_fills_up_or_turns_read_only_mid_run_is_one_line_exit_2_then_resume_works(
    tiny_model_path, reward, small_disk, capfd, fault
):
    """The real thing: after checkpoint 2 another program fills the disk (or it is remounted
    read-only); whichever write fails first (a metrics line, a completion, a checkpoint), the run
    stops with one line and the checkpoints stay loadable. With the disk back, --resume finishes."""
    run = small_disk / "run"
    argv = train_argv(tiny_model_path, run, reward, max_steps=8, save_every=1)[3:]

    def break_disk_after_checkpoint_2():
        while not (run / CHECKPOINTS / "step-000002").is_dir():
            time.sleep(0.002)
        if fault == "full":
            _fill(small_disk)
        else:
            _remount(small_disk, "ro")

    watcher = threading.Thread(target=break_disk_after_checkpoint_2, daemon=True)
    watcher.start()
    code = _cli(argv)
    watcher.join(timeout=60)
    err = capfd.readouterr().err
    assert code == 2, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.splitlines()[-1]], err
    assert "Traceback" not in err and ("No space left" in err or "Read-only file system" in err), err
    stopped = check_after_kill(run, tiny_model_path)
    assert 2 <= stopped < 8
    if fault == "full":
        (small_disk / "ballast").unlink()
    else:
        _remount(small_disk, "rw")
    code = _cli(argv + ["--resume"])
    assert code == 0, capfd.readouterr().err
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 9))


def test_a_checkpoint_that_mlx_cannot_write_on_a_full_disk_is_one_line(tiny_model, small_disk):
    """MLX reports a failed write as a RuntimeError with no errno; the checkpoint still fails with
    one line naming the full disk, and the previous checkpoint stays."""
    import mlx.optimizers as optim

    from mlx_grpo.checkpoint import save_checkpoint
    from mlx_grpo.model import add_lora

    model, _ = tiny_model
    adapter_config = add_lora(model, rank=4, scale=10.0)
    optimizer = optim.AdamW(learning_rate=1e-3)
    optimizer.init(model.trainable_parameters())
    run = small_disk / "run"
    save_checkpoint(run, 1, model, adapter_config, optimizer, {})
    _fill(small_disk)
    with pytest.raises(UserError, match="cannot write checkpoint .*No space left on device.*step-000001 is intact"):
        save_checkpoint(run, 2, model, adapter_config, optimizer, {})
    assert [c.name for c in list_checkpoints(run)] == ["step-000001"]


@pytest.mark.slow  # a real subprocess
def test_a_read_only_output_disk_is_refused_before_anything_loads(tiny_model_path, reward, small_disk, capfd):
    _remount(small_disk, "ro")
    code = _cli(train_argv(tiny_model_path, small_disk / "run", reward)[3:])
    err = capfd.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{small_disk} is not writable" in err
    _remount(small_disk, "rw")
    assert list(small_disk.iterdir()) == []


# --- memory limit ----------------------------------------------------------------------------------


def test_memory_limit_is_a_no_op_off_metal_and_set_on_metal(monkeypatch):
    calls = []
    monkeypatch.setattr(mx, "set_memory_limit", lambda limit: calls.append(limit))
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    trainer_module._set_memory_limit(12 * 2**30)
    trainer_module._set_memory_limit(None)
    assert calls == []
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 3 * 2**30})
    trainer_module._set_memory_limit(12 * 2**30)
    trainer_module._set_memory_limit(None)
    assert calls == [12 * 2**30, 3 * 2**30]


@pytest.mark.parametrize("value", ["lots", "12 GiB", "0", "-1GB", "nanGB", ""])
def test_malformed_max_memory_is_rejected_on_every_platform(value):
    with pytest.raises(UserError, match="max_memory must be auto, none or a size like 12GB"):
        TrainConfig(max_memory=value)
