"""scripts/aha_recipe.py: its stages ask build_tiny_model.py for the mixes they name, and run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx_lm
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import aha_recipe  # noqa: E402
import build_tiny_model  # noqa: E402

from mlx_grpo.config import build_config  # noqa: E402
from mlx_grpo.presets import preset_for_model  # noqa: E402

MIXES = [
    aha_recipe.SUM_MIX,
    aha_recipe.LATENT_MIX,
    aha_recipe.recipe_stages(0.4)["execute"][0],
    build_tiny_model.TraceMix(),
    build_tiny_model.TraceMix(sum_first=0.5, fixable=0.7, reversed_digits=True, flip_line=True),
]


@pytest.mark.parametrize("mix", MIXES)
def test_a_mix_survives_the_command_line(mix):
    args = build_tiny_model.argument_parser().parse_args(build_tiny_model.mix_arguments(mix))
    assert build_tiny_model.trace_mix(args) == mix


@pytest.mark.slow
def test_the_recipe_runs_every_stage_in_order_and_leaves_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "aha"
    start = str(aha_recipe.BUNDLED_MODEL)  # any model of the tokenizer; the recipe's is section 5's
    aha_recipe.main(
        ["--out", str(out), "--from", start, "--steps-scale", "0.005", "--probe-tasks", "0", "--eval-tasks", "4"]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    stages = [line for line in lines if "stage" in line]
    assert [s["stage"] for s in stages] == list(aha_recipe.recipe_stages())
    previous, data_seeds = aha_recipe.BUNDLED_MODEL.name, set()
    for stage, (name, (mix, _, _)) in zip(stages, aha_recipe.recipe_stages().items()):
        parsed = build_tiny_model.argument_parser().parse_args(stage["argv"])
        assert build_tiny_model.trace_mix(parsed) == mix
        assert (parsed.init_from and Path(parsed.init_from).name) == previous  # each continues the one before
        previous = name
        data_seeds.add(parsed.data_seed)
        assert parsed.opening_only == (name == "latent") and parsed.rehearse_share == 0.5 * (name == "latent")
    assert len(data_seeds) == len(stages)  # every stage trains on tasks of its own
    assert (
        json.loads((tmp_path / "aha-stages" / "recipe.json").read_text())["wall_s"].keys()
        == aha_recipe.recipe_stages().keys()
    )
    model, tokenizer = mlx_lm.load(str(out))
    preset = preset_for_model(str(out))  # the demo trains it as it was measured
    assert {k: preset[k] for k in aha_recipe.GRPO_PRESET} == aha_recipe.GRPO_PRESET
    assert build_config(None, {}, base=preset).max_completion_length == 192
    assert tokenizer.encode("440 + 910 = 360", add_special_tokens=False)
    with pytest.raises(SystemExit, match="exists"):  # a second run never replaces the first
        aha_recipe.main(["--out", str(out), "--from", start])


@pytest.mark.slow
def test_the_recipe_can_start_at_a_later_stage_from_that_stage_s_checkpoint(tmp_path, capsys):
    out, start = tmp_path / "aha", str(aha_recipe.BUNDLED_MODEL)
    argv = ["--out", str(out), "--from", start, "--start-at", "answer", "--steps-scale", "0.005"]
    aha_recipe.main([*argv, "--probe-tasks", "0", "--eval-tasks", "2"])
    stages = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"stage"')]
    assert [s["stage"] for s in stages] == ["answer", "latent"]
    first = build_tiny_model.argument_parser().parse_args(stages[0]["argv"])
    assert first.init_from == start and first.answer_weight == 5 and first.data_seed == aha_recipe.DATA_SEEDS["answer"]
    assert json.loads((tmp_path / "aha-stages" / "recipe.json").read_text())["start_at"] == "answer"
    assert (out / "model.safetensors").is_file()


def test_the_recipe_asks_where_to_start(tmp_path, capsys):
    with pytest.raises(SystemExit):
        aha_recipe.main(["--out", str(tmp_path / "aha")])
    assert "--from DIR" in capsys.readouterr().err and not (tmp_path / "aha-stages").exists()
