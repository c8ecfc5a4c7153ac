import pytest

from mlx_grpo.config import TrainConfig, build_config, read_config_file
from mlx_grpo.errors import UserError


def test_yaml_floats_and_falsy_values_survive(tmp_path):
    path = tmp_path / "c.yaml"
    # PyYAML reads 1e-5 as a string (YAML 1.1); seed 0 and beta 0 are falsy but real values.
    path.write_text("learning-rate: 1e-5\nseed: 0\nbeta: 0\nenable_thinking: false\nrewards: equation\n")
    config = build_config(path, base={"seed": 7, "beta": 0.04})
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)
    assert config.seed == 0 and config.beta == 0.0
    assert config.enable_thinking is False
    assert config.rewards == ["equation"]


def test_precedence_defaults_then_base_then_file_then_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("max_steps = 30\nbatch_size = 2\n")
    config = build_config(path, {"max_steps": 5, "batch_size": None}, base={"max_steps": 99, "num_generations": 4})
    assert config.max_steps == 5  # flag beats file
    assert config.batch_size == 2  # file beats default; a flag left out (None) does not count
    assert config.num_generations == 4  # base beats default
    assert config.temperature == TrainConfig().temperature


@pytest.mark.parametrize(
    "text,message",
    [
        ("bogus_key: 1\n", "unknown key"),
        ("max_steps: many\n", "max_steps must be an integer"),
        ("max_steps: 2.5\n", "max_steps must be an integer"),
        ("learning_rate: fast\n", "learning_rate must be a number"),
        ("enable_thinking: 3\n", "enable_thinking must be true or false"),
        ("num_generations: 1\n", "num_generations must be at least 2"),
        ("loss_type: ppo\n", "loss_type must be one of"),
        ("temperature: 0\n", "temperature must be positive"),
        ("top_p: 1.5\n", "top_p must be in"),
        ("- a\n- b\n", "must hold a mapping"),
        ("max_steps: [1\n", "cannot parse"),
        ("grad_accumulation: 3\n", "grad_accumulation must divide"),
        ("num_samples: 0\n", "num_samples must be positive"),
    ],
)
def test_bad_config_files_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        build_config(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        read_config_file(tmp_path / "nope.yaml")


def test_num_samples_left_unset_is_none_so_the_loader_picks_the_default():
    assert TrainConfig().num_samples is None  # 1000, or all of a smaller dataset (countdown.data.load_tasks)
    assert TrainConfig(num_samples=1000).num_samples == 1000


def test_optional_fields_are_coerced_like_their_type():
    # `float | None` is a types.UnionType, not a typing.Union: both must unwrap to the inner type
    assert TrainConfig(epsilon_high="0.28").epsilon_high == 0.28  # a YAML "1e-5"-style string
    with pytest.raises(UserError, match="num_samples must be an integer"):
        TrainConfig(num_samples="many")


def test_the_defaults_are_docs_recipe_mds_for_qwen3():
    import json
    import re

    from test_recipe_doc import defaults_table, proposed

    table, config = defaults_table(), TrainConfig()
    for name in ("enable_thinking", "prefill", "max_thinking_tokens", "thinking_stop_text", "max_answer_tokens"):
        assert getattr(config, name) == proposed(table, name), name
    for name in ("max_completion_length", "learning_rate", "beta", "num_generations", "batch_size", "max_steps"):
        assert getattr(config, name) == proposed(table, name), name
    sampling = [json.loads(v) for v in re.findall(r"`([^`]*)`", table["temperature"])]
    assert [config.temperature, config.top_p, config.top_k] == sampling == [0.6, 0.95, 20]
