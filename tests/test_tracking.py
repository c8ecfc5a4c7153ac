"""`--report-to` trackers: TensorBoard event files carry metrics.jsonl's names; missing extras give a hint."""

from __future__ import annotations

import struct
import sys
import types
from pathlib import Path

import pytest

from mlx_grpo.config import TrainConfig
from mlx_grpo.errors import UserError
from mlx_grpo.tracking import Tracker, make_tracker, scalars

ROW = {
    "step": 3,
    "reward": 1.5,
    "rewards/equation": 0.5,
    "clip_frac/low": 0.01,
    "eval/accuracy": 0.25,
    "skipped": False,
    "kl": float("nan"),
    "note": "text",
}


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from every TensorBoard event file under logdir (TFRecord framing)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in logdir.rglob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 16 + length  # length, its crc, the record, its crc
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_scalars_keep_finite_numbers_under_their_names():
    assert scalars(ROW) == {
        "reward": 1.5,
        "rewards/equation": 0.5,
        "clip_frac/low": 0.01,
        "eval/accuracy": 0.25,
        "skipped": 0.0,
    }


def test_tensorboard_writes_events_with_metric_names(tmp_path):
    pytest.importorskip("tensorboardX")
    config = TrainConfig(output_dir=str(tmp_path))
    with make_tracker("tensorboard", tmp_path, config) as tracker:
        tracker.log(ROW, step=3)
        tracker.log({"step": 4, "reward": 1.75}, step=4)
    logged = read_scalars(tmp_path / "tensorboard")
    assert set(logged) == set(scalars(ROW))
    assert logged["reward"] == [(3, 1.5), (4, 1.75)]
    assert logged["rewards/equation"] == [(3, 0.5)]


def test_wandb_logs_each_step_under_metric_names(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, metrics, step):
            calls.append(("log", metrics, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with make_tracker("wandb", tmp_path / "run", {"seed": 0}) as tracker:
        tracker.log(ROW, step=3)
    assert calls[0][1]["config"] == {"seed": 0} and calls[0][1]["name"] == "run"
    assert calls[1:] == [("log", scalars(ROW), 3), ("finish",)]


@pytest.mark.parametrize("kind, package", [("wandb", "wandb"), ("tensorboard", "tensorboardX")])
def test_missing_extra_is_a_one_line_hint(tmp_path, monkeypatch, kind, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail even if installed
    with pytest.raises(UserError) as e:
        make_tracker(kind, tmp_path, {})
    assert str(e.value) == f"--report-to {kind} needs {package}: pip install 'mlx-grpo[{kind}]'"


def test_no_tracker_and_unknown_tracker(tmp_path):
    tracker = make_tracker(None, tmp_path, {})
    assert type(tracker) is Tracker
    tracker.log(ROW, step=1)
    tracker.close()
    with pytest.raises(UserError, match="tensorboard, wandb"):
        make_tracker("mlflow", tmp_path, {})
