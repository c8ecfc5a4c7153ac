"""Countdown tasks from a file, the Hugging Face Hub or the generator; selection, split, statistics.

Sources (`load_tasks`):
- "generate": `generate_tasks(num_samples or DEFAULT_SAMPLES, seed)` (already random: no shuffle).
- a local file, by suffix (read here rather than by `datasets`, for exact line numbers and no cache):
  - .jsonl: one JSON object per line; blank lines are skipped; errors name the line.
  - .json: a list of objects, or {"data": [...]}, or JSON Lines (as `datasets` accepts); errors name
    the item (1-based) or the line.
  - .parquet: read with pyarrow; errors name the row (1-based).
  - .csv: a header with `target` and `nums`; a `nums` cell holds integers separated by commas and/or
    spaces, brackets optional: "[44, 19, 35]" (pandas), "[44 19 35]" (`datasets.to_csv`),
    "44 19 35"; errors name the line (the header is line 1).
- anything else: a Hub dataset id, `datasets.load_dataset(id, split="train")`; errors name the row.

Every row needs `target`, an integer, and `nums`, a list of 2 to MAX_NUMS non-negative integers
(the equations have no unary minus); other columns are ignored. Booleans, strings and floats (3.5
and 3.0 alike) are not integers.

Selection, as the original notebook did it: shuffle with the seed exactly as `datasets`'
`Dataset.shuffle(seed=seed)` does (NumPy `default_rng(seed).permutation`, so the same rows come
out), then take the first `num_samples`: DEFAULT_SAMPLES when not given, or every task of a source
that holds fewer (one line on stderr says so); a number given larger than the source is an error.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.solver import MAX_NUMS, reaches, solvable_with_add_sub, solve
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.errors import UserError

DEFAULT_SAMPLES = 1000  # tasks drawn when num_samples is not given, as the original notebook
_INT = re.compile(r"[+-]?\d+")


def load_tasks(source: str, *, seed: int = 0, num_samples: int | None = None) -> list[Task]:
    """Load, shuffle and select Countdown tasks.

    Args:
        source: "generate", a .jsonl/.json/.parquet/.csv path, or a Hugging Face dataset id.
        seed: shuffle seed (>= 0) for files and datasets; generator seed for "generate".
        num_samples: how many tasks to keep. None: DEFAULT_SAMPLES, or all the tasks of a file or
            dataset that holds fewer (said in one line on stderr).

    Returns:
        The selected tasks, in shuffled order.

    Raises:
        UserError: a missing or malformed source (naming file, row and problem), an unreachable
            dataset, or more samples asked for than the source holds.
    """
    if num_samples is not None and num_samples < 1:
        raise UserError(f"the number of samples must be >= 1, got {num_samples}")
    if source == "generate":
        return generate_tasks(DEFAULT_SAMPLES if num_samples is None else num_samples, seed)
    if seed < 0:
        raise UserError(f"the shuffle seed must be >= 0, got {seed}")
    tasks = read_tasks(source)
    if num_samples is None:
        num_samples = min(DEFAULT_SAMPLES, len(tasks))
        if num_samples < DEFAULT_SAMPLES:
            print(
                f"{source}: {num_samples} tasks, fewer than the default num_samples ({DEFAULT_SAMPLES}): using all of them",
                file=sys.stderr,
            )
    elif num_samples > len(tasks):
        raise UserError(f"{source}: asked for {num_samples} samples but it holds only {len(tasks)} tasks")
    order = np.random.default_rng(seed).permutation(len(tasks))[:num_samples]
    return [tasks[i] for i in order]


def read_tasks(source: str) -> list[Task]:
    """Every task of a local file or Hub dataset, validated, in the source's own order."""
    path, suffix = Path(source), Path(source).suffix.lower()
    try:
        if not path.exists() and suffix not in _READERS:
            return _read_hub(str(source))
        if path.is_dir():
            raise UserError(f"{source} is a directory, not a dataset file")
        if not path.exists():
            raise UserError(f"{source}: no such file")
        if suffix not in _READERS:
            raise UserError(f"{source}: unsupported file type {path.suffix!r} (use {', '.join(_READERS)})")
        tasks = _READERS[suffix](path)
    except UnicodeDecodeError as e:  # files are decoded whole, so e.object is all of it
        line = e.object[: e.start].count(b"\n") + 1
        raise UserError(f"{source}, line {line}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise UserError(f"{source}: cannot read ({e.strerror or e})") from None
    if not tasks:
        raise UserError(f"{source}: no tasks (the file is empty)")
    return tasks


def split_tasks(tasks: list[Task], test_size: float) -> tuple[list[Task], list[Task]]:
    """Split already shuffled tasks into (train, test): the last ceil(test_size * n) are the test set.

    The test set has the size that `Dataset.train_test_split(test_size=...)` gives (ceil, but
    without float noise: 0.07 of 100 is 7, not 8); it is the tail of the list, with no second
    shuffle. test_size 0 gives an empty test set.

    Example: 1000 tasks, test_size 0.1 -> (tasks[:900], tasks[900:]).
    """
    if not 0 <= test_size < 1:
        raise UserError(f"test_size must be in [0, 1), got {test_size}")
    n_test = math.ceil(round(test_size * len(tasks), 9))
    if tasks and n_test >= len(tasks):
        raise UserError(f"test_size {test_size} of {len(tasks)} tasks leaves no training tasks")
    cut = len(tasks) - n_test
    return tasks[:cut], tasks[cut:]


def task_stats(tasks: list[Task]) -> dict[str, float]:
    """Statistics of a task list (fractions in [0, 1]), flat for printing and comparing.

    Keys: tasks; frac_size_K for each size K; num_min/num_max/num_mean; frac_nums_le_10 (share of
    numbers <= 10); target_min/target_max/target_mean; frac_repeated_num (a number occurs twice);
    frac_solvable (any + - * / expression); frac_integer_solvable (non-negative integer steps);
    frac_add_sub (+ and - alone) and frac_add_sub_size_K per size.
    """
    n = len(tasks)
    if n == 0:
        return {"tasks": 0}
    nums = [x for t in tasks for x in t.nums]
    targets = [t.target for t in tasks]
    sizes = sorted({len(t.nums) for t in tasks})
    integer = [reaches(t.nums, t.target) for t in tasks]
    add_sub = [solvable_with_add_sub(t.nums, t.target) for t in tasks]
    stats: dict[str, float] = {"tasks": n}
    for k in sizes:
        stats[f"frac_size_{k}"] = sum(len(t.nums) == k for t in tasks) / n
    stats |= {
        "num_min": min(nums),
        "num_max": max(nums),
        "num_mean": sum(nums) / len(nums),
        "frac_nums_le_10": sum(x <= 10 for x in nums) / len(nums),
        "target_min": min(targets),
        "target_max": max(targets),
        "target_mean": sum(targets) / n,
        "frac_repeated_num": sum(len(set(t.nums)) < len(t.nums) for t in tasks) / n,
        "frac_solvable": sum(ok or solve(t.nums, t.target) is not None for t, ok in zip(tasks, integer)) / n,
        "frac_integer_solvable": sum(integer) / n,
        "frac_add_sub": sum(add_sub) / n,
    }
    for k in sizes:
        of_size = [ok for t, ok in zip(tasks, add_sub) if len(t.nums) == k]
        stats[f"frac_add_sub_size_{k}"] = sum(of_size) / len(of_size)
    return stats


def _task(target, nums, where: str) -> Task:
    """Validate one row; `where` names the file and the row for the error message."""
    if not _is_int(target):
        raise UserError(f"{where}: 'target' must be an integer, got {_show(target)}")
    if not isinstance(nums, (list, tuple)) or not all(_is_int(x) for x in nums):
        raise UserError(f"{where}: 'nums' must be a list of integers, got {_show(nums)}")
    if not 2 <= len(nums) <= MAX_NUMS:
        raise UserError(f"{where}: 'nums' must hold 2 to {MAX_NUMS} numbers, got {len(nums)}")
    if any(x < 0 for x in nums):
        raise UserError(f"{where}: 'nums' must be non-negative (equations have no unary minus), got {_show(nums)}")
    return Task(target=int(target), nums=tuple(int(x) for x in nums))


def _task_from_object(row, where: str) -> Task:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with 'target' and 'nums', got {type(row).__name__} {_show(row)}")
    for key in ("target", "nums"):
        if key not in row:
            raise UserError(f"{where}: missing '{key}' (each row needs 'target' and 'nums'; found {sorted(row)})")
    return _task(row["target"], row["nums"], where)


def _read_jsonl(path: Path, lines: list[str] | None = None) -> list[Task]:
    if lines is None:
        lines = path.read_text(encoding="utf-8-sig").split("\n")  # not splitlines: JSON strings may hold U+2028
    tasks = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            where = f"{path}, line {number}"
            tasks.append(_task_from_object(_parse_json(line, where), where))
    return tasks


def _read_json(path: Path) -> list[Task]:
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values: JSON Lines in a .json file
            return _read_jsonl(path, text.split("\n"))
        raise UserError(f"{path}, line {e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: malformed JSON: {_first_line(e)}") from None
    if isinstance(data, dict):
        data = data["data"] if "data" in data else [data]  # {"data": [...]}, or a one-line JSON Lines file
    if not isinstance(data, list):
        raise UserError(
            f'{path}: expected a list of {{"target", "nums"}} objects or {{"data": [...]}}, '
            f"got {type(data).__name__} {_show(data)}"
        )
    return [_task_from_object(row, f"{path}, item {i}") for i, row in enumerate(data, 1)]


def _read_parquet(path: Path) -> list[Task]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        _check_columns(names, str(path))
        table = pq.read_table(path, columns=["target", "nums"])
    except pyarrow.ArrowException as e:
        raise UserError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    return _tasks_from_columns(table.column("target").to_pylist(), table.column("nums").to_pylist(), str(path))


def _read_csv(path: Path) -> list[Task]:
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
    try:
        if reader.fieldnames is None:
            return []
        _check_columns(reader.fieldnames, str(path))
        return [
            _task(_csv_int(row["target"]), _csv_ints(row["nums"]), f"{path}, line {reader.line_num}") for row in reader
        ]
    except csv.Error as e:
        raise UserError(f"{path}, line {reader.line_num}: malformed CSV: {e}") from None


def _read_hub(name: str) -> list[Task]:
    import datasets

    from mlx_grpo.network import hub_offline_reason

    offline = (
        None if _datasets_cached(name) else hub_offline_reason(offline_vars=("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    )
    if offline:
        raise UserError(
            f"{name!r} is not a local file and the Hugging Face Hub is out of reach ({offline}). "
            "`make demo` runs without the Hub; or pass a local .jsonl/.json/.parquet/.csv file, or `generate`"
        )
    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as e:  # noqa: BLE001 -- offline, unknown id, no train split...: all the user's to fix
        raise UserError(
            f"{name!r} is not a local file and could not be loaded from the Hugging Face Hub "
            f"({type(e).__name__}: {_first_line(e)}). Offline? `make demo` runs without the Hub; "
            f"or pass a local .jsonl/.json/.parquet/.csv file, or `generate`"
        ) from None
    _check_columns(dataset.column_names, name)
    columns = dataset.select_columns(["target", "nums"]).to_dict()
    return _tasks_from_columns(columns["target"], columns["nums"], name)


def _datasets_cached(name: str) -> bool:
    """True when `datasets` has this id prepared in its local cache, where it looks for it offline:
    HF_DATASETS_CACHE/NAMESPACE___snake_name/CONFIG/VERSION/HASH ("Jiayi-Pan___countdown-tasks-3to4":
    the name is snake-cased and lower-cased, so a case-sensitive disk needs the same spelling)."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    namespace, _, dataset = name.rpartition("/")
    folder = Path(config.HF_DATASETS_CACHE) / "___".join(filter(None, [namespace, camelcase_to_snakecase(dataset)]))
    return any(version.is_dir() for version in folder.glob("*/*/*"))


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}


def _tasks_from_columns(targets: list, nums: list, source: str) -> list[Task]:
    return [_task(t, n, f"{source}, row {i}") for i, (t, n) in enumerate(zip(targets, nums), 1)]


def _check_columns(names, source: str) -> None:
    missing = [c for c in ("target", "nums") if c not in names]
    if missing:
        raise UserError(
            f"{source}: missing column {', '.join(map(repr, missing))} "
            f"(needs 'target' and 'nums'; found {', '.join(map(repr, names)) or 'none'})"
        )


def _csv_int(cell):
    """The int in a CSV cell, or the cell unchanged (for the error message)."""
    return int(cell) if isinstance(cell, str) and _INT.fullmatch(cell.strip()) else cell


def _csv_ints(cell):
    """The list of ints in a CSV `nums` cell ("[1, 2]", "[1 2]", "1 2"), or the cell unchanged."""
    if not isinstance(cell, str):
        return cell
    inner = cell.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    tokens = [t for t in re.split(r"[,\s]+", inner) if t]
    return [int(t) for t in tokens] if all(_INT.fullmatch(t) for t in tokens) else cell


def _parse_json(line: str, where: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer over Python's 4300-digit limit
        raise UserError(f"{where}: malformed JSON: {_first_line(e)}") from None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
