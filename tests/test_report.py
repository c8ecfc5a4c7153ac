"""Run reports: reading run files (also half-written ones), series, samples, PNGs and the HTML page."""

from __future__ import annotations

import json
import random
import re
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_grpo import plots, report, rundir
from mlx_grpo.errors import UserError

HOSTILE = "<script>document.title='PWN'+'ED'</script>"  # sets the title to PWNED only if it runs
HOSTILE_IMG = "<img src=x onerror=\"document.title='PWN'+'ED'\">"
PLOT_NAMES = [name for name, _ in report.METRIC_PLOTS] + [report.REFLECTION_PLOT]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails the test if the file is not a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert kind == b"IHDR" and length == 13
    return width, height


def _completion(rng: random.Random, step: int, nums: list[int], target: int, correct: bool) -> tuple[str, str]:
    """A completion in the trained format and the equation it states; reflection grows with step."""
    a, b, c = nums
    equation = f"({a} + {b}) - {c}" if correct else f"{a} * {b} + {c}"
    thought = f"{a} + {b} = {a + b}\n{a + b} - {c} = {a + b - c}"
    for phrase, rate in (("\nWait, no.", 40), ("\nLet me check that again.", 80), (" Verify: yes.", 120)):
        if rng.random() < step / rate:
            thought += phrase
    return f"<think>\n{thought}\n</think>\n<answer> {equation} </answer>", equation


def _self_correction(nums: list[int], target: int, equation: str) -> str:
    """A correct completion that first rejects a candidate (the sum of the numbers) against the target."""
    a, b, c = nums
    thought = f"{a} + {b} = {a + b}\n{a + b} + {c} = {a + b + c}\n{a + b + c} != {target}\n{a} + {b} = {a + b}"
    return f"<think>\n{thought}\n</think>\n<answer> {equation} </answer>"


def write_synthetic_run(
    run_dir: Path,
    *,
    steps: int = 30,
    eval_every: int = 10,
    log_every: int = 5,
    with_eval: bool = True,
    with_completions: bool = True,
    hostile: bool = True,
) -> Path:
    """A run directory as the trainer writes it (see CONTRACTS), with rewards that rise over steps."""
    rng = random.Random(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "model": "tiny-qwen3",
                "dataset": "generate",
                "num_samples": 64,
                "max_steps": steps,
                "batch_size": 2,
                "num_generations": 4,
                "max_completion_length": 64,
                "rewards": ["format", "equation"],
                "beta": 0.0,
                "learning_rate": 5e-5,
                "loss_type": "dapo",
            }
        )
    )
    metrics, completions = [], []
    if with_eval:
        metrics.append({"step": 0, "eval/accuracy": 0.05, "eval/format_rate": 0.2, "eval/completion_length": 40.0})
    for step in range(1, steps + 1):
        p = min(0.9, max(0.0, 0.05 + step / steps + rng.gauss(0, 0.08)))
        rows = []
        if with_completions and (step == 1 or step % log_every == 0):
            for i in range(8):
                nums, target = [rng.randint(1, 50) for _ in range(3)], rng.randint(1, 99)
                correct = rng.random() < p and step > 1
                text, equation = _completion(rng, step, nums, target, correct)
                if hostile and step == 1 and i == 0:
                    text = f"<think>{HOSTILE}</think>\n<answer> 1 & 2 </answer>"
                if hostile and correct and i == 1:
                    text += HOSTILE_IMG
                if correct and i == 2:
                    text = _self_correction(nums, target, equation) if target != sum(nums) else text
                rewards = {"format": 1.0, "equation": 1.0 if correct else 0.0}
                rows.append(
                    {
                        "step": step,
                        "prompt": f"<|im_start|>user\nnumbers {nums}, target {target}<|im_end|>",
                        "completion": text,
                        "target": target,
                        "nums": nums,
                        "rewards": rewards,
                        "reward": sum(rewards.values()),
                        "advantage": round(rng.uniform(-1, 1), 3),
                        "equation": None if step == 1 else equation,
                    }
                )
        completions += rows
        row = {
            "step": step,
            "reward": 1 + p,
            "reward_std": 0.4,
            "rewards/format": 1.0,
            "rewards/equation": p,
            "accuracy": p,
            "format_rate": 1.0,
            "self_check_rate": p / 4,
            "completion_length/mean": 40.0 + step,
            "completion_length/max": 64.0,
            "truncated_frac": 0.1,
            "zero_adv_frac": 1 - p,
            "loss": 0.01,
            "kl": 0.0,
            "clip_frac/low": 0.01,
            "clip_frac/high": 0.02,
            "ratio/mean": 1.0,
            "grad_norm": 0.5,
            "lr": 5e-5,
            "skipped": False,
            "time/generate": 1.0,
            "time/score": 0.01,
            "time/update": 0.5,
            "time/step": 1.6,
            "tokens_per_s": 500.0,
            "peak_memory_gb": 0.1,
        }
        if with_eval and step % eval_every == 0:
            row |= {"eval/accuracy": p * 0.8, "eval/format_rate": 0.9, "eval/completion_length": 50.0}
        metrics.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if with_completions:
        (run_dir / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in completions))
    return run_dir


def assert_report(run_dir: Path, html_path: Path) -> str:
    """Every plot is a PNG of the fixed size; the page has each section and is self-contained."""
    for name in PLOT_NAMES:
        assert png_size(run_dir / "plots" / f"{name}.png") == (plots.WIDTH, plots.HEIGHT), name
    page = html_path.read_text()
    for section in ('id="summary"', 'id="plots"', 'id="completions"'):
        assert section in page
    assert page.count('src="data:image/png;base64,') == len(PLOT_NAMES)
    assert not re.search(r"(src|href)=\"?(https?:)?//", page), "the page must not load anything from the network"
    assert "<script" not in page.lower() and "<img src=x" not in page
    return page


def test_report_from_synthetic_run(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    page = assert_report(run, report.build_report(run))
    assert "&lt;script&gt;document.title=&#x27;PWN&#x27;+&#x27;ED&#x27;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=" in page
    for label in ("first step", "first correct", "last step", "longest correct"):
        assert label in page
    assert "tiny-qwen3" in page and "best eval/accuracy" in page
    assert "<mark>Wait</mark>" in page  # reflection phrases are highlighted in completions
    corrected = report.first_self_correction(rundir.read_run(run, adapters=False).completions)
    section = page[page.index('id="self-correction"') : page.index('id="plots"')]
    assert f"target {corrected['target']}" in section and re.search(r"<mark>\d+ != \d+</mark>", section)


def test_report_of_run_in_progress(tmp_path):
    """No eval lines, no completions yet, and a half-written last line: still a full report."""
    run = write_synthetic_run(tmp_path / "run", steps=3, with_eval=False, with_completions=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward": 0.')
    page = assert_report(run, report.build_report(run, tmp_path / "out" / "r.html"))
    assert "no completions logged yet" in page and "step 3 of 3" in page
    assert "no logged completion yet rejects a candidate" in page


def test_first_self_correction_is_the_first_correct_retry():
    def row(step: int, completion: str, correct: bool) -> dict:
        return {"step": step, "target": 98, "completion": completion, "rewards": {"equation": float(correct)}}

    retry = "<think>\n44 - 19 = 25\n25 + 35 = 60\n60 != 98\n44 + 19 = 63\n63 + 35 = 98\n</think>"
    gave_up = "<think>\n44 - 19 = 25\n25 + 35 = 60\n60 != 98\n</think>"
    rows = [row(1, gave_up, False), row(3, retry, False), row(5, retry + "\n", True), row(4, retry, True)]
    assert report.first_self_correction(rows) is rows[3]  # step 4 comes before step 5 in the file
    assert report.first_self_correction(rows[:3]) is rows[2]
    assert report.first_self_correction(rows[:2]) is None


def test_a_reversed_thought_is_also_shown_the_usual_way():
    retry = "<think>\ndigits reversed\n440 - 910 = 520\n520 + 530 = 060\n060 != 890\n440 + 910 = 360\n360 + 530 = 890\n</think>"
    row = {"step": 2, "target": 98, "nums": [44, 19, 35], "completion": retry, "rewards": {"equation": 1.0}}
    assert report.first_self_correction([row]) is row  # judged in the notation
    card = report._card("x", row, report.REJECTION_LINE)
    assert "440 - 910 = 520" in card and "44 - 19 = 25\n25 + 35 = 60\n<mark>60 != 98</mark>" in card
    plain = {**row, "completion": "<think>\n44 - 19 = 25\n</think>"}
    assert "read the usual way" not in report._card("x", plain, report.REJECTION_LINE)


def test_read_jsonl_skips_only_a_truncated_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "re')
    assert [r["step"] for r in rundir.read_jsonl(path)] == [1, 2]
    path.write_text('{"step": 1}\n{"step": 2, "re\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"m\.jsonl:2"):
        rundir.read_jsonl(path)
    assert rundir.read_jsonl(tmp_path / "absent.jsonl") == []


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "run directory not found"),
        (lambda d: d.mkdir(), "no metrics"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")), "no metrics"),
    ],
)
def test_bad_run_dir_is_one_line_user_error(tmp_path, setup, message):
    setup(tmp_path / "run")
    with pytest.raises(UserError, match=message) as e:
        report.build_report(tmp_path / "run")
    assert "\n" not in str(e.value)


def test_phrase_pattern_matches_whole_words_any_case():
    pattern = report.phrase_pattern(report.DEFAULT_PHRASES)
    for text in ("Wait, no.", "let me\ncheck", "I should VERIFY it", "try  again", "use 3 instead."):
        assert pattern.search(text), text
    for text in ("awaiting", "outlet me checked", "verifying", "instead_of"):
        assert not pattern.search(text), text
    assert report.phrase_pattern(["hmm..."]).search("so, hmm... no")
    with pytest.raises(UserError):
        report.phrase_pattern(["wait", " "])


def test_reflection_rates_per_step():
    rows = [
        {"step": 2, "completion": "wait"},
        {"step": 2, "completion": "fine"},
        {"step": 1, "completion": "Verify, then wait"},
        {"step": 1, "completion": "x"},
    ]
    rates = report.reflection_rates(rows, ["wait", "verify"])
    assert rates["any phrase"] == plots.Series([1, 2], [0.5, 0.5])
    assert rates["verify"] == plots.Series([1, 2], [0.5, 0.0])


def test_pick_samples_labels_and_merges():
    ok = {"format": 1.0, "equation": 1.0}
    rows = [
        {"step": 1, "completion": "a", "rewards": {"equation": 0.0}},
        {"step": 5, "completion": "bb", "rewards": ok},
        {"step": 5, "completion": "bbbb", "rewards": ok},
        {"step": 9, "completion": "c", "rewards": {"equation": 0.0}},
    ]
    picked = [(label, row["completion"]) for label, row in report.pick_samples(rows)]
    assert picked == [("first step", "a"), ("first correct", "bb"), ("last step", "c"), ("longest correct", "bbbb")]
    assert [label for label, _ in report.pick_samples(rows[1:2])] == [
        "first step, first correct, last step, longest correct"
    ]
    assert report.pick_samples([]) == []


def test_series_keeps_last_value_per_step_and_skips_non_numbers():
    rows = [
        {"step": 2, "kl": 0.2},
        {"step": 1, "kl": 0.1},
        {"step": 3, "kl": float("nan")},
        {"step": 4, "kl": None},
        {"step": 5, "kl": True},
        {"step": 2, "kl": 0.4},
    ]
    assert plots.series(rows, "kl") == plots.Series([1, 2], [0.1, 0.4])


def test_plot_reward_accuracy_is_a_fixed_size_png(tmp_path):
    rows = [{"step": s, "reward": s / 50, "accuracy": s / 100} for s in range(1, 41)] + [
        {"step": 40, "eval/accuracy": 0.3}
    ]
    path = plots.plot_reward_accuracy(rows, tmp_path / "plots" / "reward_accuracy.png")
    assert png_size(path) == (plots.WIDTH, plots.HEIGHT)
    assert png_size(plots.plot_kl([], tmp_path / "empty.png")) == (plots.WIDTH, plots.HEIGHT)


def test_cli_report(tmp_path):
    from mlx_grpo.cli import cli
    from mlx_grpo.cli import report as _  # noqa: F401  (registers the command)

    run = write_synthetic_run(tmp_path / "run", steps=5)
    result = CliRunner().invoke(
        cli, ["report", str(run), "--output", str(tmp_path / "r.html"), "--phrases", "wait,verify"]
    )
    assert result.exit_code == 0, result.output
    assert "r.html" in result.output and (tmp_path / "r.html").is_file()
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert isinstance(result.exception, UserError)


def test_report_from_real_short_run(tmp_path, tiny_model_path):
    """The trainer's own files render; activates once mlx_grpo.trainer exists."""
    trainer = pytest.importorskip("mlx_grpo.trainer")
    from mlx_grpo.config import TrainConfig

    run = tmp_path / "run"
    trainer.train(
        TrainConfig(
            model=str(tiny_model_path),
            dataset="generate",
            num_samples=16,
            test_size=0.25,
            max_steps=2,
            batch_size=2,
            num_generations=2,
            max_completion_length=12,
            output_dir=str(run),
            eval_every=1,
            eval_samples=2,
            log_completions_every=1,
            save_every=2,
        )
    )
    assert png_size(run / "plots" / "reward_accuracy.png") == (plots.WIDTH, plots.HEIGHT)
    page = assert_report(run, report.build_report(run))
    assert "first step" in page and "last step" in page
    assert all("self_check_rate" in row for row in rundir.read_run(run, adapters=False).metrics if "reward" in row)
