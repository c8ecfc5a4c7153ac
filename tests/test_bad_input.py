"""Bad input through the real command line: every case is one line `error: ...` on
stderr, exit code 2, no traceback, and not one file written or changed.

Each case runs `mlx_grpo.cli.main` in-process (the same entry point as `python -m mlx_grpo`, with
its error handling) inside a workspace holding every file the cases point at; the workspace is
hashed before and after. The working directory is the workspace too, so a stray relative write
(the default `runs/countdown`) would show up.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
from conftest import build_tiny
from test_export import make_run

from mlx_grpo.config import TrainConfig

TASKS = "".join(
    json.dumps({"target": t, "nums": n}) + "\n"
    for t, n in [(98, [44, 19, 35]), (29, [76, 47, 2, 2]), (10, [5, 2]), (24, [6, 4, 1]), (7, [3, 4]), (12, [3, 4, 1])]
)

# What the workspace holds: name -> text (a str ending in "/" names an empty folder).
FILES = {
    "tasks.jsonl": TASKS,
    "empty.jsonl": "",
    "blank.jsonl": "\n\n\n",
    "malformed.jsonl": TASKS + "{not json\n",
    "no_nums.jsonl": '{"target": 3, "numbers": [1, 2]}\n',
    "float_nums.jsonl": '{"target": 3, "nums": [1.5, 2]}\n',
    "text_target.jsonl": '{"target": "three", "nums": [1, 2]}\n',
    "one_num.jsonl": '{"target": 3, "nums": [3]}\n',
    "negative.jsonl": '{"target": 3, "nums": [-1, 4]}\n',
    "not_rows.json": '{"rows": 3}',
    "no_target.csv": 'nums\n"[1, 2]"\n',
    "garbage.parquet": "PAR1 not really parquet",
    "tasks.txt": TASKS,
    "latin1.jsonl": b'{"target": 3, "nums": [1, 2]}\n\xff\xfe\n',
    "dataset_dir.jsonl/": "",
    "unknown_key.yaml": "lr: 0.1\n",
    "wrong_type.yaml": "lora_rank: eight\n",
    "wrong_list.yaml": "rewards: 5\n",
    "negative_lr.yaml": "learning_rate: -1e-5\n",
    "inf_lr.yaml": "learning_rate: .inf\n",
    "bad_loss.yaml": "loss_type: ppo\n",
    "bool_text.yaml": "enable_thinking: maybe\n",
    "malformed.yaml": "max_steps: [1,\n",
    "list.yaml": "- 1\n- 2\n",
    "wrong_type.toml": 'save_every = "ten"\n',
    "malformed.toml": "max_steps = \n",
    "binary.yaml": b"\x00\xff\xfe garbage",
    "config_dir.yaml/": "",
    "not_a_model/README.md": "hello",
    "broken_model/config.json": "{not json",
    "a_file": "just a file",
    "not_a_run/notes.txt": "mine",
    "bad_reward.py": "def score(completions, **kw):\n    return [0.0 for _ in completions]\n",
    "existing.json": "{}",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_path) -> Path:
    """Every file the cases use; read-only by convention (each test checks it is unchanged)."""
    root = tmp_path_factory.mktemp("bad-input")
    for name, text in FILES.items():
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    shutil.copytree(tiny_model_path, root / "model")
    no_weights = root / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_model_path / "config.json", no_weights / "config.json")
    # Adapters trained for another shape of model (hidden size 32, not 64).
    make_run(root / "other_adapters", build_tiny(root / "other_model", hidden_size=32))
    broken = root / "broken_adapters"
    shutil.copytree(root / "other_adapters", broken)
    (broken / "adapters.safetensors").write_bytes(b"\x00" * 64)
    _fake_run(root / "run", model=str(root / "model"))
    return root


def _fake_run(folder: Path, model: str) -> None:
    """A run directory as far as the output-dir checks look: resolved config + one checkpoint."""
    step = folder / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    for name in ("adapters.safetensors", "adapter_config.json", "optimizer.safetensors"):
        (step / name).write_text("placeholder")
    (step / "state.json").write_text('{"step": 2}\n')
    config = TrainConfig(model=model, dataset="generate", learning_rate=1e-3, output_dir=str(folder))
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')


def tree_hash(root: Path) -> dict[str, str]:
    """Every path under root (folders too) -> a hash of its content ('' for folders)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


# A tiny run (should a case wrongly get through, it ends in seconds).
TRAIN = [
    "train",
    "--model",
    "{ws}/model",
    "--dataset",
    "{ws}/tasks.jsonl",
    "--num-samples",
    "5",
    "--test-size",
    "0.2",
    "--output-dir",
    "{out}",
    "--quiet",
    "--max-steps",
    "1",
    "--batch-size",
    "1",
    "--num-generations",
    "2",
    "--max-completion-length",
    "2",
    "--eval-samples",
    "1",
]


def train(*args: str) -> list[str]:
    """`train` with valid defaults, then `args` (a later flag wins)."""
    return TRAIN + list(args)


def data(name: str, samples: str = "1") -> list[str]:
    """`train` on the workspace's dataset file `name`."""
    return train("--dataset", "{ws}/" + name, "--num-samples", samples)


def eval_(*args: str) -> list[str]:
    return [
        "eval",
        "--model",
        "{ws}/model",
        "--dataset",
        "{ws}/tasks.jsonl",
        "--num-samples",
        "2",
        "--max-tokens",
        "2",
        "--quiet",
        *args,
    ]


# (id, argv, a fragment the message must hold)
CASES = [
    # --- config files -------------------------------------------------------------------------
    ("config-missing", train("--config", "{ws}/nope.yaml"), "config file not found"),
    ("config-unknown-key", train("--config", "{ws}/unknown_key.yaml"), "unknown key(s)"),
    ("config-wrong-type", train("--config", "{ws}/wrong_type.yaml"), "lora_rank must be an integer"),
    ("config-wrong-list", train("--config", "{ws}/wrong_list.yaml"), "rewards must be a list of strings"),
    ("config-negative-lr", train("--config", "{ws}/negative_lr.yaml"), "learning_rate must be positive"),
    ("config-infinite-lr", train("--config", "{ws}/inf_lr.yaml"), "learning_rate must be finite"),
    ("config-unknown-loss", train("--config", "{ws}/bad_loss.yaml"), "loss_type must be one of"),
    ("config-bool-text", train("--config", "{ws}/bool_text.yaml"), "enable_thinking must be true or false"),
    ("config-malformed-yaml", train("--config", "{ws}/malformed.yaml"), "cannot parse config file"),
    ("config-not-mapping", train("--config", "{ws}/list.yaml"), "must hold a mapping"),
    ("config-toml-wrong-type", train("--config", "{ws}/wrong_type.toml"), "save_every must be an integer"),
    ("config-malformed-toml", train("--config", "{ws}/malformed.toml"), "cannot parse config file"),
    ("config-binary", train("--config", "{ws}/binary.yaml"), "binary.yaml"),
    ("config-is-a-folder", train("--config", "{ws}/config_dir.yaml"), "config_dir.yaml"),
    # --- datasets -----------------------------------------------------------------------------
    ("data-missing", train("--dataset", "{ws}/nope.jsonl"), "no such file"),
    ("data-empty", train("--dataset", "{ws}/empty.jsonl"), "no tasks"),
    ("data-blank-lines", train("--dataset", "{ws}/blank.jsonl"), "no tasks"),
    ("data-malformed-line", data("malformed.jsonl", "6"), "line 7: malformed JSON"),
    ("data-missing-column", data("no_nums.jsonl"), "missing 'nums'"),
    ("data-float-numbers", data("float_nums.jsonl"), "must be a list of integers"),
    ("data-text-target", data("text_target.jsonl"), "'target' must be an integer"),
    ("data-one-number", data("one_num.jsonl"), "must hold 2 to"),
    ("data-negative-number", data("negative.jsonl"), "non-negative"),
    ("data-wrong-shape-json", data("not_rows.json"), "missing 'target'"),
    ("data-csv-no-target", data("no_target.csv"), "missing column 'target'"),
    ("data-garbage-parquet", data("garbage.parquet"), "not a readable Parquet"),
    ("data-unsupported-suffix", train("--dataset", "{ws}/tasks.txt"), "unsupported file type"),
    ("data-not-utf8", data("latin1.jsonl"), "not UTF-8"),
    ("data-is-a-folder", train("--dataset", "{ws}/dataset_dir.jsonl"), "is a directory"),
    ("data-too-few-rows", train("--num-samples", "100"), "asked for 100 samples but it holds only 6"),
    ("data-hub-offline", train("--dataset", "someone/countdown-data"), "out of reach"),
    # --- models and adapters ------------------------------------------------------------------
    ("model-missing", train("--model", "{ws}/no_such_model"), "model not found"),
    ("model-not-a-model", train("--model", "{ws}/not_a_model"), "no config.json"),
    ("model-broken-config", train("--model", "{ws}/broken_model"), "cannot load model"),
    ("model-no-weights", train("--model", "{ws}/no_weights"), "cannot load model"),
    ("model-is-a-file", train("--model", "{ws}/a_file"), "not a model folder"),
    ("model-hub-offline", train("--model", "someone/no-such-model"), "out of reach"),
    ("eval-adapters-other-model", eval_("--adapter-path", "{ws}/other_adapters"), "cannot load model"),
    ("eval-adapters-missing", eval_("--adapter-path", "{ws}/nope"), "not an adapter folder"),
    ("eval-adapters-corrupt", eval_("--adapter-path", "{ws}/broken_adapters"), "cannot load model"),
    ("eval-output-exists", eval_("--output", "{ws}/existing.json"), "already exists"),
    ("eval-model-missing", ["eval", "--model", "{ws}/no_such_model"], "model not found"),
    # --- output dir and resume ----------------------------------------------------------------
    ("out-holds-a-run", train("--output-dir", "{ws}/run"), "already holds a run"),
    ("out-holds-a-different-run", train("--output-dir", "{ws}/run", "--resume"), "holds a different run"),
    ("resume-nothing", train("--resume"), "nothing to resume"),
    ("resume-not-a-run", train("--output-dir", "{ws}/not_a_run", "--resume"), "nothing to resume"),
    ("out-not-a-run", train("--output-dir", "{ws}/not_a_run"), "not empty and does not hold a run"),
    ("out-is-a-file", train("--output-dir", "{ws}/a_file"), "not a folder"),
    ("out-under-a-file", train("--output-dir", "{ws}/a_file/run"), "a_file"),
    ("resume-and-overwrite", train("--output-dir", "{ws}/run", "--resume", "--overwrite"), "exclude each other"),
    # --- values -------------------------------------------------------------------------------
    ("group-of-one", train("--num-generations", "1"), "num_generations must be at least 2"),
    ("zero-length", train("--max-completion-length", "0"), "max_completion_length must be positive"),
    ("zero-lr", train("--learning-rate", "0"), "learning_rate must be positive"),
    ("negative-temperature", train("--temperature", "-1"), "temperature must be positive"),
    ("top-p-above-one", train("--top-p", "1.5"), "top_p must be in (0, 1]"),
    ("epsilon-one", train("--epsilon", "1"), "epsilon must be in [0, 1)"),
    ("zero-steps", train("--max-steps", "0"), "max_steps must be positive"),
    ("grad-accumulation-not-dividing", train("--grad-accumulation", "3"), "must divide"),
    ("unknown-loss-type", train("--loss-type", "ppo"), "ppo"),
    ("not-a-number", train("--learning-rate", "fast"), "fast"),
    ("max-memory-malformed", train("--max-memory", "lots"), "max_memory"),
    ("max-memory-zero", train("--max-memory", "0GB"), "max_memory"),
    ("unknown-reward", train("--reward", "nosuchreward"), "nosuchreward"),
    ("reward-missing-function", train("--reward", "{ws}/bad_reward.py:nope"), "nope"),
    ("reward-bad-weight", train("--reward", "format=heavy"), "heavy"),
    ("push-bad-repo-id", train("--push-to-hub", "not a repo"), "invalid --repo-id"),
    ("push-without-token", train("--push-to-hub", "me/countdown"), "needs a Hugging Face token"),
    ("unknown-flag", train("--lr", "0.1"), "--lr"),
    ("answer-budget-zero", train("--max-answer-tokens", "0"), "max_answer_tokens must be positive"),
    ("stop-text-without-think-end", train("--thinking-stop-text", "time is up"), "must contain </think>"),
    (
        "thinking-budget-leaves-no-room",
        train("--max-thinking-tokens", "60", "--max-completion-length", "64"),
        "must exceed max_thinking_tokens",
    ),
]


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workspace, cli, monkeypatch, tmp_path, argv, fragment):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)  # and no stored login:
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(workspace / "no_token"))
    before = tree_hash(workspace)
    code, out, err = cli(*[a.replace("{ws}", str(workspace)).replace("{out}", str(tmp_path / "out")) for a in argv])
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and fragment in err, err
    assert tree_hash(workspace) == before
    assert list(tmp_path.iterdir()) == []


def test_the_table_covers_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
