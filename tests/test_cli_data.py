"""`mlx-grpo data generate | solve | stats`: a few runs as a real process, the rest through CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mlx_grpo.cli import cli
from mlx_grpo.cli import data as _data_commands  # noqa: F401  (registers `data` on `cli`)
from mlx_grpo.countdown.data import load_tasks
from mlx_grpo.countdown.solver import reaches, worked_solution
from mlx_grpo.errors import UserError


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlx_grpo", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


# --- as a process: exit codes and stderr ---------------------------------------------------------


@pytest.mark.slow  # a real subprocess
def test_generate_writes_solvable_tasks(tmp_path):
    out = tmp_path / "sub" / "tasks.jsonl"
    result = run("data", "generate", "--num", "30", "--seed", "5", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote 30 tasks to {out}" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30 and all(set(row) == {"target", "nums"} for row in rows)
    assert all(reaches(row["nums"], row["target"]) for row in rows)
    assert sorted(load_tasks(str(out)), key=repr) == sorted(load_tasks("generate", seed=5, num_samples=30), key=repr)


@pytest.mark.slow  # a real subprocess
def test_solve_prints_the_equation_and_steps():
    result = run("data", "solve", "--nums", "44,19,35", "--target", "98")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "(44 + 19) + 35 = 98\n  44 + 19 = 63\n  63 + 35 = 98\n"


@pytest.mark.slow  # a real subprocess
def test_solve_without_solution_exits_1():
    result = run("data", "solve", "--nums", "4,4,4", "--target", "1")
    assert result.returncode == 1
    assert result.stderr == "no solution: [4, 4, 4] cannot reach 1 with + - * / using each number once\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "stats", "missing.jsonl"], "error: missing.jsonl: no such file\n"),
        (["data", "stats", "bad.jsonl"], "error: bad.jsonl, line 2: malformed JSON: Expecting value (column 1)\n"),
        (
            ["data", "solve", "--nums", "4,x", "--target", "1"],
            "error: --nums must be integers separated by commas (like 44,19,35), got '4,x'\n",
        ),
    ],
)
@pytest.mark.slow  # a real subprocess
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text('{"target": 3, "nums": [1, 2]}\n]\n')
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == message and "Traceback" not in result.stderr


# --- through CliRunner ---------------------------------------------------------------------


def test_generate_is_reproducible_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "tasks.jsonl"
    assert invoke("data", "generate", "--num", "25", "--seed", "1", "-o", str(out)).exit_code == 0
    first = out.read_text()
    refused = invoke("data", "generate", "--num", "5", "-o", str(out))
    assert isinstance(refused.exception, UserError)
    assert str(refused.exception) == f"{out} exists; pass --overwrite to replace it"
    assert out.read_text() == first  # untouched
    assert invoke("data", "generate", "--num", "25", "--seed", "1", "-o", str(out), "--overwrite").exit_code == 0
    assert out.read_text() == first  # same seed, same tasks
    assert invoke("data", "generate", "--num", "5", "--seed", "2", "-o", str(out), "--overwrite").exit_code == 0
    assert len(out.read_text().splitlines()) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.jsonl"]  # no temporary file left


def test_generate_progress_goes_to_stderr(tmp_path):
    result = invoke("data", "generate", "--num", "3", "-o", str(tmp_path / "t.jsonl"))
    assert result.exit_code == 0
    assert "generating" in result.stderr and "generating" not in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "generate", "--num", "0", "-o", "x.jsonl"], "--num must be >= 1, got 0"),
        (["data", "solve", "--nums", "1,2", "--target", "1.5"], "--target must be an integer, got '1.5'"),
        (["data", "solve", "--nums", "", "--target", "1"], "--nums must be integers separated by commas"),
        (
            ["data", "solve", "--nums", "1,2,3,4,5,6,7", "--target", "1"],
            "--nums: the solver takes 1 to 6 numbers, got 7",
        ),
        (["data", "solve", "--nums", "1,-2", "--target", "1"], "--nums: numbers must be non-negative, got [1, -2]"),
        (["data", "stats", "generate", "--num", "0"], "the number of samples must be >= 1, got 0"),
    ],
)
def test_bad_flags(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert isinstance(result.exception, UserError), result.output
    assert str(result.exception).startswith(message)
    assert not (tmp_path / "x.jsonl").exists()


def test_solve_completion_is_the_worked_solution():
    result = invoke("data", "solve", "--nums", "1 5 5 5", "--target", "24", "--completion")
    assert result.exit_code == 0
    assert result.stdout == worked_solution([1, 5, 5, 5], 24) + "\n"


def test_stats_table_and_json(shared_data):
    sample = str(shared_data / "countdown_real_sample.jsonl")
    table = invoke("data", "stats", sample)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["statistic", "value"]
    assert "tasks                  2000" in lines and "frac_add_sub           0.517" in lines
    as_json = json.loads(invoke("data", "stats", sample, "--json").stdout)
    assert as_json["tasks"] == 2000 and as_json["frac_size_3"] == 0.4875
    generated = json.loads(invoke("data", "stats", "generate", "--num", "200", "--seed", "1", "--json").stdout)
    assert generated["tasks"] == 200 and generated["frac_solvable"] == 1.0
