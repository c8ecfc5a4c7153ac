"""Secrets and trust: the Hub token never reaches a file, log, metric or message, and no
code shipped with a model runs unless the user passes --trust-remote-code.

Only the network boundary is faked (`HfApi.create_repo` / `upload_folder`, as in test_hub.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from mlx_grpo.errors import UserError
from mlx_grpo.model import load_model

TOKEN = "hf_FAKEsecretTokenForLeakTests0123456789"


@pytest.fixture
def cli(cli):
    """conftest's `cli`, stdout and stderr together: a secret must be in neither."""

    def invoke(*args):
        code, out, err = cli(*args)
        return code, out + err

    return invoke


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """HF_TOKEN set, a fresh HF_HOME, and a fake Hub recording what would be uploaded; `fail` makes
    the upload raise an error whose text quotes the token (as an HTTP error's request headers can)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    state = {"uploaded": {}, "fail": False, "tokens": []}

    def upload_folder(api, *, folder_path, repo_id, **kwargs):
        state["tokens"].append(api.token)
        if state["fail"]:
            request = httpx2.Request("POST", "https://huggingface.co/api/me/countdown/commit/main")
            raise HfHubHTTPError(
                f"500 Server Error for url {request.url} (Authorization: Bearer {api.token})",
                response=httpx2.Response(500, request=request),
            )
        folder = Path(folder_path)
        state["uploaded"] = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: state["tokens"].append(api.token))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return state


def files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_hub_token_never_reaches_a_file_log_metric_or_message(tiny_model_path, tmp_path, cli, hub, spaces_reward):
    run = tmp_path / "run"
    hub["fail"] = True  # the push at the end of training fails with the token in the library's message
    code, output = cli(
        "train",
        "--model",
        tiny_model_path,
        "--dataset",
        "generate",
        "--num-samples",
        20,
        "--test-size",
        0.2,
        "--batch-size",
        2,
        "--num-generations",
        2,
        "--max-completion-length",
        6,
        "--max-steps",
        2,
        "--save-every",
        1,
        "--log-completions-every",
        1,
        "--eval-every",
        1,
        "--eval-samples",
        2,
        "--reward",
        "format",
        "--reward",
        spaces_reward,
        "--report-to",
        "tensorboard",
        "--push-to-hub",
        "me/countdown",
        "--output-dir",
        run,
        "--quiet",
    )
    assert code == 2 and output.splitlines()[-1].startswith("error: upload to me/countdown failed"), output
    hub["fail"] = False
    code, pushed = cli("push", run, "--repo-id", "me/countdown")
    assert code == 0, pushed
    assert hub["tokens"] and set(hub["tokens"]) == {TOKEN}  # the token was there to leak
    assert all((run / name).exists() for name in ("tensorboard", "metrics.jsonl", "completions.jsonl", "checkpoints"))
    assert "adapters.safetensors" in hub["uploaded"]
    for secret in (TOKEN, TOKEN[3:]):  # whole, or without its prefix
        assert secret not in output + pushed
        assert files_holding(tmp_path, secret) == []  # run dir, tensorboard events, HF_HOME, temp files
        assert [name for name, data in hub["uploaded"].items() if secret.encode() in data] == []


# --- trust_remote_code --------------------------------------------------------------------------

EVIL_MODEL = """
from pathlib import Path
Path(__file__).with_name("RAN").write_text("custom model code ran")
from mlx_lm.models.qwen3 import Model, ModelArgs
"""

EVIL_TOKENIZER = """
from pathlib import Path
Path(__file__).with_name("RAN").write_text("custom tokenizer code ran")
from transformers import PreTrainedTokenizerFast as EvilTokenizer
"""


@pytest.fixture
def model_with_code(tiny_model_path, tmp_path) -> Path:
    """The tiny model, with its architecture in a Python file that config.json names (mlx-lm's
    `model_file`); importing that file leaves a RAN marker."""
    folder = tmp_path / "model-with-code"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_file": "custom_arch.py"}))
    (folder / "custom_arch.py").write_text(EVIL_MODEL)
    return folder


def test_model_code_never_runs_without_the_flag(model_with_code, tmp_path, cli):
    code, output = cli(
        "train",
        "--model",
        model_with_code,
        "--dataset",
        "generate",
        "--num-samples",
        10,
        "--output-dir",
        tmp_path / "run",
        "--quiet",
    )
    assert code == 2 and output.startswith("error: ") and output.count("\n") == 1, output
    assert "--trust-remote-code" in output
    code, output = cli("eval", "--model", model_with_code, "--num-samples", 1, "--quiet")
    assert code == 2 and "--trust-remote-code" in output, output
    assert not (model_with_code / "RAN").exists()
    code, output = cli(
        "eval", "--model", model_with_code, "--num-samples", 1, "--max-tokens", 1, "--quiet", "--trust-remote-code"
    )
    assert code == 0 and (model_with_code / "RAN").exists(), output  # with the flag it runs: the check is real
    assert not (tmp_path / "run").exists()


def test_tokenizer_code_never_runs(tiny_model_path, tmp_path):
    """A tokenizer_config.json whose auto_map points at Python in the folder: not imported, flag or not
    (mlx-lm never passes trust_remote_code to transformers)."""
    folder = tmp_path / "tokenizer-with-code"
    shutil.copytree(tiny_model_path, folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil_tok.EvilTokenizer", "evil_tok.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "evil_tok.py").write_text(EVIL_TOKENIZER)
    for trust in (False, True):
        try:
            load_model(str(folder), trust_remote_code=trust)
        except UserError:
            pass  # refusing to load is fine too
        assert not (folder / "RAN").exists()


def test_trust_remote_code_is_off_by_default():
    from mlx_grpo.config import TrainConfig

    assert TrainConfig().trust_remote_code is False
    assert load_model.__kwdefaults__["trust_remote_code"] is False
