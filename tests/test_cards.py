"""What `mlx-grpo fuse` and `push` publish about the base: its Hub id or a plain "local", its licence,
the quantization of a fused model, a tokenizer that decodes as the base's does, and folder permissions."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from huggingface_hub import ModelCard
from test_export import make_run
from transformers import AutoTokenizer

import mlx_grpo.cli.hub  # noqa: F401  (registers push and fuse)
from mlx_grpo.demo import BUNDLED_MODEL
from mlx_grpo.hub import export_run

QWEN = "Qwen/Qwen3-0.6B"


@pytest.fixture(scope="module")
def licensed_base(tmp_path_factory, tiny_model_path):
    """A copy of the tiny model whose own card declares a licence (and a Hub-style front matter)."""
    base = tmp_path_factory.mktemp("licensed") / "tiny-base"
    shutil.copytree(tiny_model_path, base)
    (base / "README.md").write_text("---\nlicense: mit\ntags: [qwen3]\n---\n# tiny base\n")
    return base


@pytest.fixture(scope="module")
def run(tmp_path_factory, licensed_base):
    return make_run(tmp_path_factory.mktemp("cards") / "run", licensed_base)[0]


def _texts(folder) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.rglob("*") if p.suffix in (".md", ".json")}


@pytest.mark.parametrize("fmt", ["fused", "peft", "mlx"])
def test_a_local_base_is_said_to_be_local_and_its_path_is_nowhere(run, licensed_base, tmp_path, fmt):
    out = tmp_path / "out"
    export_run(run, out, fuse=fmt == "fused", fmt="peft" if fmt == "peft" else "mlx")
    texts = _texts(out)
    texts.pop("training_config.json")  # the run's own record of what it trained, paths and all
    assert not [name for name, text in texts.items() if str(licensed_base) in text]
    card = ModelCard.load(out / "README.md")
    assert "base_model" not in card.data.to_dict()
    assert "local folder (`tiny-base`), not a model on the Hugging Face Hub" in card.text
    assert "--base-model-id" in card.text
    if fmt != "fused":  # adapter snippets load the base: a placeholder stands for it
        assert "path/to/tiny-base" in card.text
    if fmt == "peft":
        assert json.loads(texts["adapter_config.json"])["base_model_name_or_path"] is None


@pytest.mark.parametrize("fmt", ["peft", "mlx"])
def test_base_model_id_names_the_base_in_card_and_configs(run, licensed_base, tmp_path, fmt):
    out = tmp_path / "out"
    export_run(run, out, fmt=fmt, base_model_id=QWEN)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == QWEN and card.data.base_model_relation == "adapter"
    assert f'from_pretrained("{QWEN}")' in card.text or f'load("{QWEN}"' in card.text
    assert "local folder" not in card.text and str(licensed_base) not in card.content
    config = json.loads((out / "adapter_config.json").read_text())
    assert config.get("base_model_name_or_path", config.get("base_model")) == QWEN


def test_a_bad_base_model_id_is_one_line_and_writes_nothing(run, cli, tmp_path):
    code, _, err = cli("fuse", run, "--output", tmp_path / "out", "--base-model-id", "not an id")
    assert code == 2 and err.count("\n") == 1 and "--base-model-id must be a Hub repo id" in err
    assert list(tmp_path.iterdir()) == []


def test_licence_comes_from_the_base_models_own_card(run, tmp_path, tiny_model_path):
    export_run(run, tmp_path / "mit", fuse=True)
    assert ModelCard.load(tmp_path / "mit" / "README.md").data.license == "mit"
    unlicensed = make_run(tmp_path / "run2", tiny_model_path)[0]  # the fixture model has no card
    export_run(unlicensed, tmp_path / "none")
    assert ModelCard.load(tmp_path / "none" / "README.md").data.license is None


def test_the_bundled_models_apache_licence_reaches_the_card(tmp_path):
    run = make_run(tmp_path / "run", BUNDLED_MODEL)[0]
    export_run(run, tmp_path / "out", fmt="peft")
    assert ModelCard.load(tmp_path / "out" / "README.md").data.license == "apache-2.0"


@pytest.mark.parametrize("bits", [4, 8])
def test_a_quantized_fused_card_says_bits_and_group_size(run, tmp_path, bits):
    export_run(run, tmp_path / "q", fuse=True, quantize=bits)
    card = ModelCard.load(tmp_path / "q" / "README.md")
    assert {f"{bits}-bit", "quantized"} <= set(card.data.tags)
    assert f"quantized to {bits} bits (group size 64" in card.text
    export_run(run, tmp_path / "float", fuse=True)
    plain = ModelCard.load(tmp_path / "float" / "README.md")
    assert "quantized" not in plain.data.tags and "quantized to" not in plain.text


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_fused_folder_gets_the_permissions_a_mkdir_gets(run, tmp_path, umask):
    previous = os.umask(umask)
    try:
        export_run(run, tmp_path / "fused", fuse=True)
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "fused").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o777 & ~umask


def test_fused_bundled_model_decodes_as_the_base_does(tmp_path):
    run = make_run(tmp_path / "run", BUNDLED_MODEL)[0]
    export_run(run, tmp_path / "fused", fuse=True)
    base, fused = (
        AutoTokenizer.from_pretrained(str(BUNDLED_MODEL)),
        AutoTokenizer.from_pretrained(str(tmp_path / "fused")),
    )
    text = "<|im_start|>assistant\n<think>\n44 + 19 = 63\n</think>\n<answer> 44 + 19 </answer><|im_end|>"
    ids = base.encode(text, add_special_tokens=False)
    assert fused.encode(text, add_special_tokens=False) == ids
    for skip in (True, False):
        assert fused.decode(ids, skip_special_tokens=skip) == base.decode(ids, skip_special_tokens=skip)
    assert base.decode(ids, skip_special_tokens=True) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
