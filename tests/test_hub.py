"""`mlx-grpo push`: the staged folder, the model card, the upload call and every Hub failure, offline.

Only the network boundary is faked: `HfApi.create_repo` and `HfApi.upload_folder`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import httpx2
import mlx_lm
import numpy as np
import pytest
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError
from test_export import TOKENS, make_run, tree_hash

import mlx_grpo.cli.hub  # noqa: F401  (registers push and fuse)
from mlx_grpo.card import hub_id, model_card, read_metrics, summarize_metrics
from mlx_grpo.config import TrainConfig
from mlx_grpo.errors import UserError
from mlx_grpo.hub import hub_error_message, list_files, push_run
from mlx_grpo.rundir import Run

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"
ADAPTER_FILES = {
    "README.md",
    "adapters.safetensors",
    "adapter_config.json",
    "training_config.json",
    "final_metrics.json",
    "plots/reward_accuracy.png",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_path):
    return make_run(tmp_path_factory.mktemp("hub") / "run", tiny_model_path)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """A fake HF_TOKEN, no stored login, and temp folders we can check for leftovers."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path / "tmp"


class FakeHub:
    """Records the calls; `error` is raised by the call named in `fail_at`."""

    def __init__(self):
        self.calls, self.uploaded, self.error, self.fail_at = [], {}, None, "create_repo"

    def create_repo(self, api, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs, api.token))
        if self.error is not None and self.fail_at == "create_repo":
            raise self.error

    def upload_folder(self, api, *, folder_path, repo_id, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs, api.token))
        if self.error is not None and self.fail_at == "upload_folder":
            raise self.error
        folder = Path(folder_path)  # what would go over the wire, read at call time
        self.uploaded = {name: (folder / name).read_bytes() for name in list_files(folder)}


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: fake.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: fake.upload_folder(api, **kw))
    return fake


def logits_with_adapters(base, adapter_path) -> np.ndarray:
    model, _ = mlx_lm.load(str(base), adapter_path=str(adapter_path))
    return np.array(model(TOKENS))


def test_dry_run_stages_loadable_adapters_prints_them_and_calls_nothing(run, hub, cli, tiny_model_path):
    run_dir, model = run
    before = tree_hash(run_dir)
    code, out, err = cli("push", run_dir, "--repo-id", "me/countdown", "--dry-run")
    assert code == 0, err
    assert hub.calls == []
    staged = Path(out.split("the staged folder is ")[1].splitlines()[0])
    assert set(list_files(staged)) == ADAPTER_FILES
    assert all(name in out for name in ADAPTER_FILES)
    got = logits_with_adapters(tiny_model_path, staged)
    np.testing.assert_allclose(got, np.array(model(TOKENS)), atol=1e-6)
    assert not np.allclose(got, np.array(mlx_lm.load(str(tiny_model_path))[0](TOKENS)), atol=1e-3)  # adapters matter
    assert json.loads((staged / "training_config.json").read_text())["max_steps"] == 3
    final = json.loads((staged / "final_metrics.json").read_text())
    assert final["steps"] == 3 and final["eval"]["eval/accuracy"] == 0.375 and final["eval_baseline"]["step"] == 0
    assert all(FAKE_TOKEN.encode() not in (staged / name).read_bytes() for name in ADAPTER_FILES)
    assert FAKE_TOKEN not in out + err
    assert tree_hash(run_dir) == before
    shutil.rmtree(staged)


def test_push_uploads_the_staged_folder_to_the_named_repo(run, hub, isolated):
    run_dir, _ = run
    before = tree_hash(run_dir)
    result = push_run(run_dir, "me/countdown-grpo", private=True)
    (create, repo_id, create_kw, create_token), (upload, up_repo, up_kw, up_token) = hub.calls
    assert (create, repo_id, up_repo) == ("create_repo", "me/countdown-grpo", "me/countdown-grpo")
    assert create_kw["repo_type"] == "model" and create_kw["private"] is True and create_kw["exist_ok"] is True
    assert upload == "upload_folder" and up_kw["repo_type"] == "model"
    assert create_token == up_token == FAKE_TOKEN  # read from HF_TOKEN by huggingface_hub's lookup
    assert set(hub.uploaded) == ADAPTER_FILES and result.files == sorted(ADAPTER_FILES)
    assert hub.uploaded["adapters.safetensors"] == (run_dir / "adapters.safetensors").read_bytes()
    recorded = json.loads((run_dir / "adapter_config.json").read_text())
    recorded.pop("base_model")  # a local folder's path: the upload names no base rather than this machine's path
    assert json.loads(hub.uploaded["adapter_config.json"]) == recorded
    assert all(FAKE_TOKEN.encode() not in data for data in hub.uploaded.values())
    assert result.uploaded and result.url == "https://huggingface.co/me/countdown-grpo" and result.folder is None
    assert list(isolated.iterdir()) == []  # the staged folder is gone
    assert tree_hash(run_dir) == before


def test_push_peft_format_through_the_cli(run, hub, cli):
    run_dir, _ = run
    code, out, err = cli("push", run_dir, "--repo-id", "me/countdown-peft", "--format", "peft")
    assert code == 0, err
    assert out.strip() == "uploaded 6 files to https://huggingface.co/me/countdown-peft"
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(hub.uploaded)
    assert "adapters.safetensors" not in hub.uploaded
    assert json.loads(hub.uploaded["adapter_config.json"])["peft_type"] == "LORA"
    assert yaml.safe_load(hub.uploaded["README.md"].decode().split("---")[1])["library_name"] == "peft"


def test_push_fused_uploads_a_complete_model_that_loads(run, hub, tmp_path):
    run_dir, model = run
    push_run(run_dir, "me/countdown-fused", fuse=True)
    folder = tmp_path / "downloaded"
    for name, data in hub.uploaded.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen3"  # not the training config
    assert json.loads((folder / "training_config.json").read_text())["lora_rank"] == 4
    fused, _ = mlx_lm.load(str(folder))
    np.testing.assert_allclose(np.array(fused(TOKENS)), np.array(model(TOKENS)), atol=1e-4)


def _http_error(cls, status: int):
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return cls(
        f"{status} Client Error for url {request.url} (Authorization: Bearer {FAKE_TOKEN})",
        response=httpx2.Response(status, request=request),
    )


@pytest.mark.parametrize("fail_at", ["create_repo", "upload_folder"])
@pytest.mark.parametrize(
    "error, expected",
    [
        (_http_error(HfHubHTTPError, 401), "authentication failed (401)"),
        (_http_error(HfHubHTTPError, 403), "permission denied (403)"),
        (_http_error(RepositoryNotFoundError, 404), "not found"),
        (_http_error(HfHubHTTPError, 500), "HfHubHTTPError: 500"),
        (httpx2.ConnectError(f"connection refused, token {FAKE_TOKEN}"), "cannot reach the Hub"),
        (ConnectionError("Max retries exceeded with url: /api/repos/create"), "cannot reach the Hub"),
        (OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE"),
    ],
    ids=["401", "403", "404", "500", "connect", "connection", "offline"],
)
def test_hub_errors_are_one_line_exit_2_without_the_token(run, hub, cli, isolated, error, expected, fail_at):
    run_dir, _ = run
    before = tree_hash(run_dir)
    hub.error, hub.fail_at = error, fail_at
    code, out, err = cli("push", run_dir, "--repo-id", "me/countdown")
    assert code == 2
    assert out == "" and err.count("\n") == 1 and err.startswith("error: upload to me/countdown failed")
    assert expected in err and "Traceback" not in err
    assert FAKE_TOKEN not in err and "hf_FakeToken" not in err
    assert tree_hash(run_dir) == before
    assert list(isolated.iterdir()) == []


@pytest.mark.parametrize(
    "args, expected",
    [
        (["{missing}", "--repo-id", "me/x"], "run directory not found"),
        (["{empty}", "--repo-id", "me/x"], "not a run directory"),
        (["{run}", "--repo-id", "no-namespace"], "expected USER/NAME"),
        (["{run}", "--repo-id", "a/b/c"], "invalid --repo-id"),
        (["{run}", "--repo-id", "me/bad name"], "invalid --repo-id"),
        (["{run}", "--repo-id", "me/x--y"], "invalid --repo-id"),
        (["{run}", "--repo-id", "me/x", "--quantize", "4"], "add --fuse"),
        (["{run}", "--repo-id", "me/x", "--fuse", "--format", "peft"], "do not combine"),
        (["{broken}", "--repo-id", "me/x"], "cannot read"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_uploaded(run, hub, cli, tmp_path, args, expected):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(run[0], broken)
    (broken / "adapter_config.json").write_text("{not json")
    paths = {"{missing}": tmp_path / "nope", "{empty}": tmp_path / "empty", "{run}": run[0], "{broken}": broken}
    code, out, err = cli("push", *[paths.get(a, a) for a in args])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert hub.calls == []


def test_no_token_is_a_clear_error_but_a_dry_run_needs_none(run, hub, cli, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    code, _, err = cli("push", run[0], "--repo-id", "me/x")
    assert code == 2 and "no Hugging Face token" in err and hub.calls == []
    code, _, err = cli("push", run[0], "--repo-id", "me/x", "--dry-run")
    assert code == 0 and hub.calls == [], err


def test_a_staged_file_holding_the_token_is_never_uploaded(run, hub, cli, tmp_path, isolated):
    leaky = tmp_path / "leaky"
    shutil.copytree(run[0], leaky)
    config = json.loads((leaky / "config.json").read_text())
    (leaky / "config.json").write_text(json.dumps({**config, "prefill": FAKE_TOKEN}))
    for dry_run in ([], ["--dry-run"]):
        code, out, err = cli("push", leaky, "--repo-id", "me/x", *dry_run)
        assert code == 2 and "contains the Hugging Face token" in err  # README.md: the card shows the prefill
        assert FAKE_TOKEN not in out + err
    assert hub.calls == []
    assert list(isolated.iterdir()) == []


def test_error_messages_scrub_the_token_and_anything_token_shaped():
    error = RuntimeError(f"bad header Authorization: Bearer {FAKE_TOKEN} and hf_OtherLookingToken123456")
    message = hub_error_message(error, "me/x", FAKE_TOKEN)
    assert FAKE_TOKEN not in message and "hf_OtherLooking" not in message


def test_token_check_finds_a_token_split_across_read_chunks(tmp_path):
    from mlx_grpo.hub import _check_token_absent

    (tmp_path / "weights.bin").write_bytes(b"x" * 1000 + FAKE_TOKEN.encode() + b"y" * 1000)
    with pytest.raises(UserError, match="weights.bin contains the Hugging Face token"):
        _check_token_absent(tmp_path, FAKE_TOKEN, chunk=1010)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_metadata_and_text(run):
    rows = read_metrics(run[0] / "metrics.jsonl")  # the torn last line is skipped
    metrics = summarize_metrics(rows)
    config = TrainConfig(model="Qwen/Qwen3-0.6B", max_steps=3).to_dict()
    adapter_config = json.loads((run[0] / "adapter_config.json").read_text())
    hub_run = Run(run[0], adapter_config, config, "Qwen/Qwen3-0.6B")
    plots = ["plots/reward_accuracy.png"]
    card = model_card(hub_run, kind="adapters", repo="me/countdown", metrics=metrics, plots=plots)
    meta = _front_matter(card)
    assert meta["base_model"] == "Qwen/Qwen3-0.6B" and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "mlx" and meta["pipeline_tag"] == "text-generation"
    assert {"mlx", "grpo", "lora"} <= set(meta["tags"])
    assert meta["datasets"] == ["Jiayi-Pan/Countdown-Tasks-3to4"]
    for text in (
        "GRPO",
        "format, equation",
        "dapo",
        "37.5%",
        "before training: 10.0%",
        "| steps | 3 |",
        "hf download me/countdown --local-dir countdown",
        "mlx_lm.generate --model Qwen/Qwen3-0.6B --adapter-path countdown",
        'load("Qwen/Qwen3-0.6B", adapter_path=snapshot_download("me/countdown"))',
        "![reward accuracy](plots/reward_accuracy.png)",
    ):
        assert text in card, text
    fused = model_card(hub_run, kind="fused", repo="me/countdown-fused", metrics={}, plots=[])
    assert _front_matter(fused)["base_model_relation"] == "finetune" and 'load("me/countdown-fused")' in fused


def test_model_card_of_a_local_base_and_dataset_leaves_hub_fields_out(run):
    config = TrainConfig(model=str(run[0]), dataset="generate").to_dict()
    local = Run(run[0], json.loads((run[0] / "adapter_config.json").read_text()), config, str(run[0]))
    meta = _front_matter(model_card(local, kind="adapters", repo="me/x", metrics={}, plots=[]))
    assert "base_model" not in meta and "license" not in meta and "datasets" not in meta
    assert meta["library_name"] == "mlx"
    assert hub_id("/Users/me/.cache/huggingface/hub/models--Qwen--Qwen3-0.6B/snapshots/abc123") == "Qwen/Qwen3-0.6B"


def test_fuse_cli_refuses_a_non_empty_output_and_replaces_it_with_overwrite(run, cli, tmp_path):
    run_dir, model = run
    before = tree_hash(run_dir)
    out = tmp_path / "fused"
    out.mkdir()
    (out / "stale.safetensors").write_text("old")
    code, _, err = cli("fuse", run_dir, "--output", out)
    assert code == 2 and "not empty (pass --overwrite" in err and (out / "stale.safetensors").exists()
    code, stdout, err = cli("fuse", run_dir, "--output", out, "--overwrite")
    assert code == 0, err
    assert f"fused model written to {out}" in stdout and "model.safetensors" in stdout
    assert not (out / "stale.safetensors").exists()
    fused, _ = mlx_lm.load(str(out))
    np.testing.assert_allclose(np.array(fused(TOKENS)), np.array(model(TOKENS)), atol=1e-4)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folders left
    code, _, err = cli("fuse", run_dir, "--output", run_dir, "--overwrite")
    assert code == 2 and "would replace the run directory" in err
    assert tree_hash(run_dir) == before
