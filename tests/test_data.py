"""Loading tasks from every source, the notebook's selection and split, and the bad-input table."""

from __future__ import annotations

import csv
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlx_grpo.countdown.data import load_tasks, read_tasks, split_tasks, task_stats
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.errors import UserError

ROWS = [
    {"target": 98, "nums": [44, 19, 35]},
    {"target": 64, "nums": [63, 95, 96]},
    {"target": 24, "nums": [47, 76, 55, 60]},
]
TASKS = [Task(98, (44, 19, 35)), Task(64, (63, 95, 96)), Task(24, (47, 76, 55, 60))]


@pytest.fixture(scope="module")
def real_file(shared_data):
    return shared_data / "countdown_real_sample.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path, header, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- every format gives the same tasks -------------------------------------------------------


def test_real_sample_loads_2000_tasks_in_file_order(real_file):
    tasks = read_tasks(str(real_file))
    assert len(tasks) == 2000
    assert tasks[:2] == [Task(98, (44, 19, 35)), Task(64, (63, 95, 96))]
    assert sorted(load_tasks(str(real_file), num_samples=2000), key=repr) == sorted(tasks, key=repr)  # shuffled


@pytest.mark.parametrize(
    "name, write",
    [
        ("t.jsonl", lambda p: write_jsonl(p, ROWS)),
        (
            "blank_lines.jsonl",
            lambda p: p.write_text("\n".join(["", json.dumps(ROWS[0]), "", json.dumps(ROWS[1]), json.dumps(ROWS[2])])),
        ),
        (
            "unicode.jsonl",
            lambda p: p.write_text(
                "".join(  # a raw U+2028 inside a JSON string is not a line break
                    json.dumps(dict(row, note="a\u2028b"), ensure_ascii=False) + "\r\n" for row in ROWS
                ),
                encoding="utf-8",
            ),
        ),
        ("list.json", lambda p: p.write_text(json.dumps(ROWS))),
        ("field.json", lambda p: p.write_text(json.dumps({"data": ROWS}))),
        ("lines.json", lambda p: write_jsonl(p, ROWS)),  # JSON Lines in a .json file, as datasets accepts
        (
            "t.parquet",
            lambda p: pq.write_table(
                pa.Table.from_pylist([dict(row, prompt="ignored", data_source="countdown") for row in ROWS]), p
            ),
        ),
        ("datasets.parquet", lambda p: datasets.Dataset.from_list(ROWS).to_parquet(str(p))),
        (
            "pandas.csv",
            lambda p: write_csv(p, ["target", "nums", "extra"], [[r["target"], str(r["nums"]), "x"] for r in ROWS]),
        ),
        ("datasets.csv", lambda p: datasets.Dataset.from_list(ROWS).to_csv(str(p), index=False)),  # "[44 19 35]"
        (
            "plain.csv",
            lambda p: write_csv(p, ["nums", "target"], [[" ".join(map(str, r["nums"])), r["target"]] for r in ROWS]),
        ),
    ],
)
def test_every_format_reads_the_same_tasks(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    assert read_tasks(str(path)) == TASKS


def test_selection_is_the_same_as_datasets_shuffle_then_select(real_file):
    rows = [json.loads(line) for line in real_file.open()]
    expected = datasets.Dataset.from_list(rows).shuffle(seed=42).select(range(100))
    tasks = load_tasks(str(real_file), seed=42, num_samples=100)
    assert tasks == [Task(r["target"], tuple(r["nums"])) for r in expected]
    assert load_tasks(str(real_file), seed=42, num_samples=100) == tasks  # reproducible
    assert load_tasks(str(real_file), seed=43, num_samples=100) != tasks
    assert load_tasks(str(real_file), seed=42, num_samples=10) == tasks[:10]


def test_the_default_draws_1000_tasks_from_a_larger_source(real_file, capsys):
    assert load_tasks(str(real_file), seed=3) == load_tasks(str(real_file), seed=3, num_samples=1000)
    assert capsys.readouterr().err == ""


def test_the_default_takes_every_task_of_a_smaller_source_and_says_so(tmp_path, capsys):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    tasks = load_tasks(str(path), seed=5)
    assert sorted(tasks, key=repr) == sorted(TASKS, key=repr)
    assert tasks == load_tasks(str(path), seed=5, num_samples=3)  # the same seeded shuffle
    assert capsys.readouterr().err == f"{path}: 3 tasks, fewer than the default num_samples (1000): using all of them\n"
    assert_user_error(
        lambda: load_tasks(str(path), num_samples=4), f"{path}: asked for 4 samples but it holds only 3 tasks"
    )


def test_a_dataset_in_the_datasets_cache_loads_offline(tmp_path, monkeypatch, capsys):
    from hf_cache import DATASET_ID, cache_countdown

    cache_countdown(tmp_path, ROWS)  # at datasets/Jiayi-Pan___countdown-tasks-3to4/...: its name is lower-cased
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    assert sorted(load_tasks(DATASET_ID), key=repr) == sorted(TASKS, key=repr)
    assert (
        f"{DATASET_ID}: 3 tasks, fewer than the default num_samples (1000): using all of them"
        in capsys.readouterr().err
    )
    assert_user_error(lambda: load_tasks(DATASET_ID, num_samples=5), f"{DATASET_ID}: asked for 5 samples")


def test_train_uses_all_of_a_small_dataset_unless_num_samples_asks_for_more(cli, tiny_model_path, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS * 2)
    train = ["train", "--model", tiny_model_path, "--dataset", path, "--max-steps", "1", "--batch-size", "1"]
    train += ["--num-generations", "2", "--max-completion-length", "2", "--eval-samples", "1", "--quiet"]
    code, _, err = cli(*train, "--output-dir", tmp_path / "run")
    assert code == 0, err
    assert f"{path}: 6 tasks, fewer than the default num_samples (1000): using all of them" in err
    code, _, err = cli(*train, "--output-dir", tmp_path / "asks-for-more", "--num-samples", "7")
    assert (code, err) == (2, f"error: {path}: asked for 7 samples but it holds only 6 tasks\n")
    assert not (tmp_path / "asks-for-more").exists()


def test_generate_source():
    assert load_tasks("generate", seed=3, num_samples=40) == generate_tasks(40, seed=3)
    assert len(load_tasks("generate")) == 1000


# --- split and statistics --------------------------------------------------------------------


def test_split_keeps_the_tail_as_test_set():
    tasks = generate_tasks(1000, seed=0)
    train, test = split_tasks(tasks, 0.1)
    assert (train, test) == (tasks[:900], tasks[900:])
    assert split_tasks(tasks, 0.0) == (tasks, [])
    assert split_tasks([], 0.1) == ([], [])


@pytest.mark.parametrize("n, test_size", [(100, 0.07), (1000, 0.1), (7, 0.5), (3, 0.1), (999, 0.123)])
def test_split_sizes_match_datasets_train_test_split(n, test_size):
    dataset = datasets.Dataset.from_dict({"i": list(range(n))})
    expected = len(dataset.train_test_split(test_size=test_size, seed=0)["test"])
    expected -= (n, test_size) == (100, 0.07)  # datasets: ceil(0.07 * 100 = 7.000000000000001) = 8; here 7
    train, test = split_tasks(generate_tasks(n, seed=0), test_size)
    assert len(test) == expected and len(train) + len(test) == n


@pytest.mark.parametrize(
    "test_size, message",
    [
        (1.0, "test_size must be in [0, 1), got 1.0"),
        (-0.1, "test_size must be in [0, 1), got -0.1"),
        (0.9, "test_size 0.9 of 2 tasks leaves no training tasks"),
    ],
)
def test_split_rejects_bad_sizes(test_size, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        split_tasks(TASKS[:2], test_size)


def test_stats_of_the_real_rows(real_file):
    stats = task_stats(read_tasks(str(real_file)))
    assert stats["tasks"] == 2000
    assert stats["frac_size_3"] == 975 / 2000 and stats["frac_size_4"] == 1025 / 2000
    assert (stats["num_min"], stats["num_max"], stats["target_min"], stats["target_max"]) == (1, 99, 10, 100)
    assert stats["frac_solvable"] == stats["frac_integer_solvable"] == 1.0
    assert stats["frac_add_sub"] == 1035 / 2000  # "about half", measured
    assert task_stats([]) == {"tasks": 0}


def test_stats_count_unsolvable_tasks():
    stats = task_stats([Task(1, (4, 4, 4)), Task(24, (1, 5, 5, 5)), Task(12, (4, 4, 4))])
    assert stats["frac_solvable"] == pytest.approx(2 / 3)  # 5 * (5 - 1/5) = 24 needs a fraction
    assert stats["frac_integer_solvable"] == pytest.approx(1 / 3)
    assert stats["frac_add_sub"] == pytest.approx(1 / 3)
    assert stats["frac_repeated_num"] == 1.0


# --- bad input: one line naming the file, the row and the problem ---------------------------

BAD_FILES = [
    # (file name, content: str, bytes or rows, expected message after the file name)
    ("empty.jsonl", "", ": no tasks (the file is empty)"),
    ("blank.jsonl", "\n  \n", ": no tasks (the file is empty)"),
    (
        "malformed.jsonl",
        '{"target": 98, "nums": [44, 19, 35]}\n{"target": 98, "nums": [44, 19\n',
        ", line 2: malformed JSON: Expecting ',' delimiter (column 31)",
    ),
    ("list.jsonl", "[98, [44, 19, 35]]\n", ", line 1: expected an object with 'target' and 'nums', got list"),
    (
        "no_nums.jsonl",
        [{"target": 98, "numbers": [1, 2]}],
        ", line 1: missing 'nums' (each row needs 'target' and 'nums'; found ['numbers', 'target'])",
    ),
    ("no_target.jsonl", [ROWS[0], {"nums": [1, 2]}], ", line 2: missing 'target'"),
    ("float_target.jsonl", [{"target": 3.5, "nums": [1, 2]}], ", line 1: 'target' must be an integer, got 3.5"),
    ("whole_float.jsonl", [{"target": 3.0, "nums": [1, 2]}], ", line 1: 'target' must be an integer, got 3.0"),
    ("str_target.jsonl", [{"target": "98", "nums": [1, 2]}], ", line 1: 'target' must be an integer, got '98'"),
    ("bool_target.jsonl", [{"target": True, "nums": [1, 2]}], ", line 1: 'target' must be an integer, got True"),
    ("null_target.jsonl", [{"target": None, "nums": [1, 2]}], ", line 1: 'target' must be an integer, got None"),
    ("float_num.jsonl", [{"target": 9, "nums": [1, 3.5]}], ", line 1: 'nums' must be a list of integers, got [1, 3.5]"),
    ("str_num.jsonl", [{"target": 9, "nums": [1, "x"]}], ", line 1: 'nums' must be a list of integers, got [1, 'x']"),
    (
        "bool_num.jsonl",
        [{"target": 9, "nums": [1, True]}],
        ", line 1: 'nums' must be a list of integers, got [1, True]",
    ),
    ("str_nums.jsonl", [{"target": 9, "nums": "1 2 3"}], ", line 1: 'nums' must be a list of integers, got '1 2 3'"),
    ("dict_nums.jsonl", [{"target": 9, "nums": {"a": 1}}], ", line 1: 'nums' must be a list of integers, got {'a': 1}"),
    ("one_num.jsonl", [{"target": 9, "nums": [9]}], ", line 1: 'nums' must hold 2 to 6 numbers, got 1"),
    ("no_num.jsonl", [{"target": 9, "nums": []}], ", line 1: 'nums' must hold 2 to 6 numbers, got 0"),
    ("many_nums.jsonl", [{"target": 9, "nums": list(range(1, 8))}], ", line 1: 'nums' must hold 2 to 6 numbers, got 7"),
    ("negative.jsonl", [{"target": 9, "nums": [-1, 10]}], ", line 1: 'nums' must be non-negative"),
    ("huge.jsonl", '{"target": 1' + "0" * 5000 + ', "nums": [1, 2]}\n', ", line 1: malformed JSON: Exceeds the limit"),
    (
        "latin1.jsonl",
        b'{"target": 9, "nums": [1, 2]}\n{"target": 9, "nums": [1, 2]} \xe9t\xe9\n',
        ", line 2: not UTF-8 text (invalid continuation byte)",
    ),
    (
        "latin1.csv",
        b"target,nums\n9,[1 2]\n9,[1 2] \xe9t\xe9\n",
        ", line 3: not UTF-8 text (invalid continuation byte)",
    ),
    (
        "malformed.json",
        '[{"target": 98, "nums": [44, 19, 35]},\n {"target": }]',
        ", line 2: malformed JSON: Expecting value (column 13)",
    ),
    ("number.json", "42", ': expected a list of {"target", "nums"} objects or {"data": [...]}, got int 42'),
    ("item.json", json.dumps([ROWS[0], {"nums": [1, 2]}]), ", item 2: missing 'target'"),
    (
        "field.json",
        json.dumps({"data": [ROWS[0], {"target": 1, "nums": [1.5, 2]}]}),
        ", item 2: 'nums' must be a list of integers, got [1.5, 2]",
    ),
    ("empty.json", "  \n", ": no tasks (the file is empty)"),
    ("empty_list.json", "[]", ": no tasks (the file is empty)"),
    ("empty.csv", "", ": no tasks (the file is empty)"),
    ("header_only.csv", "target,nums\n", ": no tasks (the file is empty)"),
    (
        "no_nums.csv",
        "target,numbers\n98,[44 19 35]\n",
        ": missing column 'nums' (needs 'target' and 'nums'; found 'target', 'numbers')",
    ),
    (
        "bad_cell.csv",
        'target,nums\n98,"[44, 19, 35]"\n9,"[1, x]"\n',
        ", line 3: 'nums' must be a list of integers, got '[1, x]'",
    ),
    ("float.csv", "target,nums\n3.5,[1 2]\n", ", line 2: 'target' must be an integer, got '3.5'"),
    ("short_row.csv", "target,nums\n98\n", ", line 2: 'nums' must be a list of integers, got None"),
    ("text.parquet", "not parquet at all", ": not a readable Parquet file"),
]


@pytest.mark.parametrize("name, content, message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, list):
        write_jsonl(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert_user_error(lambda: load_tasks(str(path)), f"{path}{message}")


@pytest.mark.parametrize(
    "columns, message",
    [
        (
            {"target": [98], "numbers": [[1, 2]]},
            ": missing column 'nums' (needs 'target' and 'nums'; found 'target', 'numbers')",
        ),
        ({"target": [98.0, 3.5], "nums": [[1, 2], [1, 2]]}, ", row 1: 'target' must be an integer, got 98.0"),
        ({"target": [98, 5], "nums": [[1, 2], [1, None]]}, ", row 2: 'nums' must be a list of integers, got [1, None]"),
        ({"target": [98], "nums": ["[1, 2]"]}, ", row 1: 'nums' must be a list of integers, got '[1, 2]'"),
    ],
)
def test_bad_parquet_files(tmp_path, columns, message):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), path)
    assert_user_error(lambda: load_tasks(str(path)), f"{path}{message}")


def test_bad_paths_and_sizes(tmp_path, real_file):
    (tmp_path / "notes.txt").write_text("98 44 19 35\n")
    for source, message in [
        (tmp_path / "missing.jsonl", f"{tmp_path / 'missing.jsonl'}: no such file"),
        (tmp_path, f"{tmp_path} is a directory, not a dataset file"),
        (
            tmp_path / "notes.txt",
            f"{tmp_path / 'notes.txt'}: unsupported file type '.txt' (use .jsonl, .json, .parquet, .csv)",
        ),
    ]:
        assert_user_error(lambda source=source: load_tasks(str(source)), message)
    assert_user_error(
        lambda: load_tasks(str(real_file), num_samples=2001),
        f"{real_file}: asked for 2001 samples but it holds only 2000 tasks",
    )
    assert_user_error(lambda: load_tasks(str(real_file), num_samples=0), "the number of samples must be >= 1, got 0")
    assert_user_error(lambda: load_tasks("generate", num_samples=-5), "the number of samples must be >= 1, got -5")
    assert_user_error(lambda: load_tasks(str(real_file), seed=-1), "the shuffle seed must be >= 0, got -1")


def test_unreachable_hub_dataset_points_to_offline_options(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # conftest sets it too; the Hub is never contacted
    message = assert_user_error(
        lambda: load_tasks("nobody-here/made-up-countdown-tasks"),
        "'nobody-here/made-up-countdown-tasks' is not a local file and the Hugging Face Hub is out of reach (HF_",
    )
    assert "`make demo`" in message and "`generate`" in message and "local .jsonl" in message


def assert_user_error(call, expected: str) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected), message
    return message


@pytest.mark.parametrize("variable", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
def test_either_offline_variable_gives_the_hint_at_once(monkeypatch, variable):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    message = assert_user_error(
        lambda: load_tasks("nobody-here/made-up-countdown-tasks"),
        "'nobody-here/made-up-countdown-tasks' is not a local file",
    )
    assert f"({variable} is set)" in message
