"""The performance benchmark: mlx-grpo against the GRPO trainers a Mac user could pick, side by side.

    python scripts/bench.py [--quick] [--full] [--shapes tiny,qwen3-0.6b] [--json out.json]
        [--trl-python PEERS/trl/bin/python] [--mlx-lm-lora-python PEERS/mlx-lm-lora/bin/python]

One process per contender (scripts/bench_peers/*.py, protocol in its common.py), all on the same
model folder, prompts and workload: B=4 Countdown prompts x G=4 completions x 64 tokens, every row
forced to full length, LoRA rank 8 on all linear layers, β=0.04; median of several steps after a
warm-up. Peers run from their own venvs (see README) and are skipped, with a note, when absent.
Measured: rollout tok/s (ours vs mlx-lm `batch_generate` vs a sequential generate loop), the full
GRPO step split into generate / score / update, peak MLX memory and peak RSS (of the whole
process, from os.wait4), the machine and its BLAS, the decode floor from the measured memory
bandwidth and matmul rate, and the OpenBLAS / reference-BLAS speed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlx_grpo.blas import GUARD_VAR, OPT_OUT_VAR, openblas_reexec_env  # noqa: E402

RUNNERS = REPO / "scripts" / "bench_peers"
QWEN3_TOKENIZER = REPO.parent / "shared" / "data" / "qwen3_tokenizer"
TASKS = [  # (target, nums): the B prompts every contender sees
    (98, (44, 19, 35)),
    (64, (63, 95, 96)),
    (27, (10, 4, 35, 2)),
    (51, (88, 9, 28, 13)),
]
WORKLOAD = {
    "group_size": 4,
    "max_tokens": 64,
    "temperature": 1.0,
    "seed": 0,
    "beta": 0.04,
    "lora_rank": 8,
    "learning_rate": 1e-5,
}


@dataclass
class Shape:
    name: str
    description: str
    model: dict  # modelgen.qwen3_config shape arguments
    tokenizer: str  # "tiny": a byte-level BPE of 512 tokens; "qwen3": the real one where shipped
    warmup: int  # untimed runs before the timed ones
    repeats: int  # timed runs (median reported)


SHAPES = {
    "tiny": Shape(
        "tiny",
        "hidden 128, 4 layers, heads 4/2, ffn 384, byte-level BPE vocab 512",
        dict(hidden_size=128, num_hidden_layers=4, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2),
        "tiny",
        warmup=1,
        repeats=5,
    ),
    "qwen3-0.6b": Shape(
        "qwen3-0.6b",
        "Qwen3-0.6B shape, random weights, fp32, tied, vocab 151,936",
        dict(
            hidden_size=1024,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=3072,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
        "qwen3",
        warmup=1,
        repeats=1,
    ),
}


@dataclass
class Job:
    """One contender on one shape, run as `PYTHON RUNNER SPEC OUT` in its own process."""

    id: str  # what --only selects
    label: str
    kind: str  # rollout | step | probe
    runner: str
    python: str | None  # None: this venv's
    options: dict = field(default_factory=dict)
    blas: str = "openblas"  # openblas | reference | native (leave the process's BLAS alone: PyTorch)
    workload: dict = field(default_factory=dict)  # overrides of WORKLOAD and the shape's warmup/repeats


# --- model folders ---------------------------------------------------------------------------
def _tokenizer_corpus(seed: int = 0) -> list[str]:
    """Countdown-like text, enough for a byte-level BPE to reach 512 tokens."""
    from mlx_grpo.countdown.prompts import SYSTEM_PROMPT, USER_TEMPLATE

    rng = random.Random(seed)
    words = (
        "the a is of to and that it for on with as be or not but we can first then next answer equation "
        "number numbers target result step check right wrong again instead try solve think so if each only "
        "once use make get value sum difference product add subtract multiply divide plus minus times "
        "equals close bigger smaller less more"
    ).split()
    corpus = [SYSTEM_PROMPT]
    for _ in range(600):
        nums = [rng.randint(1, 99) for _ in range(rng.choice((3, 4)))]
        a, b, c = nums[:3]
        o1, o2 = rng.choice("+-*/"), rng.choice("+-*/")
        corpus.append(USER_TEMPLATE.format(numbers=str(nums), target=rng.randint(10, 100)))
        corpus.append(
            f"<think>\n{a} {o1} {b} = ?\nLet me try {c} {o2} {a}.\n</think>\n<answer> ({a} {o1} {b}) {o2} {c} </answer>"
        )
        corpus.append(" ".join(rng.choice(words) for _ in range(30)).capitalize() + ".")
    return corpus


def _write_tokenizer(path: Path) -> tuple[int, int]:
    """The real Qwen3 tokenizer where shipped (../shared/data/qwen3_tokenizer), else the tiny BPE.

    Returns the (eos, bos) token ids."""
    from mlx_grpo.modelgen import save_tokenizer, train_tokenizer

    if (QWEN3_TOKENIZER / "tokenizer_config.json").is_file():
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(QWEN3_TOKENIZER / name, path / name)
        config = json.loads((QWEN3_TOKENIZER / "config.json").read_text())
        return config["eos_token_id"], config["bos_token_id"]
    tokenizer = train_tokenizer(_tokenizer_corpus(), vocab_size=512)
    save_tokenizer(tokenizer, path)
    return tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")


def build_model(shape: Shape, cache_dir: Path) -> Path:
    """The shape's model folder under cache_dir, built once (random weights, seed 0)."""
    path = cache_dir / f"{shape.name}-seed0"
    if (path / "model.safetensors").is_file():
        return path
    import mlx.core as mx

    from mlx_grpo.modelgen import build_tiny_model, init_qwen3, qwen3_config, save_model

    print(f"building the {shape.name} model in {path} (once) ...", flush=True)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if shape.tokenizer == "tiny":
        build_tiny_model(tmp, _tokenizer_corpus(), seed=0, vocab_size=512, **shape.model)
    else:
        tmp.mkdir(parents=True)
        eos, bos = _write_tokenizer(tmp)
        config = qwen3_config(**shape.model, eos_token_id=eos, bos_token_id=bos)
        save_model(init_qwen3(config, seed=0), config, tmp)
        mx.clear_cache()
    tmp.rename(path)
    return path


def weights_per_token(config: dict) -> int:
    """Weights one decode step reads per row: every block's matrices plus the output projection."""
    H, ffn, V, hd = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["head_dim"]
    nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    block = H * hd * (2 * nh + 2 * nkv) + 3 * H * ffn + 2 * H + 2 * hd  # q, k, v, o; gate, up, down; norms
    return config["num_hidden_layers"] * block + V * H + H


def decode_floor(config: dict, rows: int, probe: dict) -> dict:
    """Fastest possible decode on this machine: every weight read once per step (bandwidth), and
    2 FLOPs per weight per row (matmul rate); the step takes the larger of the two times."""
    n = weights_per_token(config)
    bandwidth, rate = max(probe["copy_gb_s"].values()), max(probe["matmul_gflops"].values())
    read_s, compute_s = 4 * n / bandwidth / 1e9, 2 * n * rows / rate / 1e9
    return {
        "weights": n,
        "gb_per_step": 4 * n / 1e9,
        "gflop_per_step": 2 * n * rows / 1e9,
        "bandwidth_gb_s": bandwidth,
        "matmul_gflops": rate,
        "step_s": max(read_s, compute_s),
        "tok_s": rows / max(read_s, compute_s),
    }


# --- running one job -------------------------------------------------------------------------
def job_env(blas: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", GUARD_VAR, OPT_OUT_VAR)}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
    )
    if blas == "openblas":
        env = openblas_reexec_env(env) or env  # as the CLI does; unchanged where it does not apply
        env.pop(GUARD_VAR, None)
    elif blas == "reference":
        env[OPT_OUT_VAR] = "1"
    return env


def run_job(job: Job, spec: dict, run_dir: Path, timeout: float) -> dict:
    """Run one contender; its result plus peak RSS and wall time of the whole process."""
    python = job.python or sys.executable
    if not Path(python).is_file():
        return {"status": "skipped", "note": f"{python} not found (see README: peer venvs)"}
    stem = f"{spec['shape']}-{job.id}"
    spec_path, out_path, log_path = (run_dir / (stem + s) for s in (".spec.json", ".out.json", ".log"))
    spec_path.write_text(json.dumps(spec, indent=2))
    out_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [python, str(RUNNERS / job.runner), str(spec_path), str(out_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=job_env(job.blas),
            cwd=run_dir,
        )
        rc, rusage = _wait(proc, timeout)
    wall = time.perf_counter() - t0
    if rc == 0 and out_path.is_file():
        result = json.loads(out_path.read_text())
    else:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        why = f"timed out after {timeout:.0f} s" if rc is None else f"exit {rc}"
        result = {"status": "failed", "note": f"{why}: {' | '.join(tail)} (log: {log_path})"}
    rss_unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {**result, "peak_rss_gib": rusage.ru_maxrss * rss_unit / 2**30, "process_s": wall}


def _wait(proc: subprocess.Popen, timeout: float):
    """(exit code or None on timeout, rusage of the child) without losing the rusage to Popen.wait."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage
        if time.monotonic() > deadline:
            proc.kill()
            _, _, rusage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            return None, rusage
        time.sleep(0.1)


# --- what runs -------------------------------------------------------------------------------
def plan(shape: Shape, args) -> list[Job]:
    """The jobs for one shape. On the 0.6B shape the slow ones (minutes each) need --full."""
    small, full = shape.name == "tiny", args.full
    warm = {} if small else {"warmup_tokens": 2}  # mlx-lm compiles nothing: a short warm-up is enough
    jobs = [
        Job("ours-rollout", "mlx-grpo rollout.generate", "rollout", "mlx_grpo_engine.py", None, {"mode": "rollout"}),
        Job("mlx-lm-batch", "mlx-lm batch_generate", "rollout", "mlx_lm_generate.py", None, {"mode": "batch", **warm}),
    ]
    if small or full:
        jobs += [
            Job(
                "mlx-lm-loop",
                "mlx-lm generate, one row at a time",
                "rollout",
                "mlx_lm_generate.py",
                None,
                {"mode": "sequential", **warm},
            ),
            Job("ours-step", "mlx-grpo", "step", "mlx_grpo_engine.py", None, {"mode": "step"}),
            Job("mlx-lm-lora", "mlx-lm-lora", "step", "mlx_lm_lora_grpo.py", args.mlx_lm_lora_python),
            Job(
                "trl",
                "TRL, no grad checkpointing",
                "step",
                "trl_grpo.py",
                args.trl_python,
                {"gradient_checkpointing": False},
                blas="native",
            ),
            Job(
                "trl-ckpt",
                "TRL, grad checkpointing (its default)",
                "step",
                "trl_grpo.py",
                args.trl_python,
                {"gradient_checkpointing": True},
                blas="native",
            ),
        ]
    if small and not args.quick:  # the same contenders without the OpenBLAS preload
        jobs += [
            Job(f"{j.id}-refblas", j.label, j.kind, j.runner, j.python, j.options, blas="reference")
            for j in jobs
            if j.id in ("mlx-lm-batch", "ours-step")
        ]
    if full and not small:  # the memory target: one step of 4 x 8 x 512
        jobs.append(
            Job(
                "ours-step-4x8x512",
                "mlx-grpo, 4 x 8 x 512",
                "step",
                "mlx_grpo_engine.py",
                None,
                {"mode": "step"},
                workload={"group_size": 8, "max_tokens": 512, "warmup": 0, "repeats": 1},
            )
        )
    return [j for j in jobs if not args.only or j.id in args.only]


def timing(shape: Shape, args) -> dict:
    repeats = min(2, shape.repeats) if args.quick else shape.repeats
    return {
        "warmup": shape.warmup if args.warmup is None else args.warmup,
        "repeats": repeats if args.repeats is None else args.repeats,
    }


def make_spec(shape: Shape, job: Job, model_dir: Path, args) -> dict:
    from mlx_grpo.countdown.prompts import build_messages
    from mlx_grpo.countdown.tasks import Task

    tasks = [Task(target, nums) for target, nums in TASKS]
    return {
        **WORKLOAD,
        **timing(shape, args),
        **job.workload,
        "shape": shape.name,
        "model": str(model_dir),
        "tasks": [{"target": t.target, "nums": list(t.nums)} for t in tasks],
        "messages": [build_messages(t) for t in tasks],
        "options": job.options,
    }


def probe_machine(args, run_dir: Path, timeout: float) -> dict:
    """CPU, memory, MLX device and BLAS, bandwidth and matmul rate (and without OpenBLAS, unless --quick)."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (int(line.split()[1]) / 2**20 for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")),
        None,
    )
    machine = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    sizes = {"matmul_n": [1024], "copy_mib": 64} if args.quick else {"matmul_n": [1024, 2048], "copy_mib": 512}
    probe = Job("probe", "machine probe", "probe", "machine_probe.py", None, sizes)
    spec = {"shape": "machine", "options": probe.options}
    machine["mlx"] = run_job(probe, spec, run_dir, timeout)
    if not args.quick:
        reference = Job(
            "probe-refblas",
            "machine probe",
            "probe",
            "machine_probe.py",
            None,
            {"matmul_n": [1024], "copy_mib": 128},
            blas="reference",
        )
        machine["mlx_reference_blas"] = run_job(reference, {**spec, "options": reference.options}, run_dir, timeout)
    return machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --- derived figures -------------------------------------------------------------------------
def derive(results: dict, floor: dict | None) -> None:
    """Add the comparisons: vs batch_generate, share of the decode floor, ours vs peers, BLAS."""
    ok = {k: r for k, r in results.items() if r.get("status") == "ok"}
    batch, ours = ok.get("mlx-lm-batch"), ok.get("ours-step")
    for key, r in ok.items():
        if r["kind"] == "rollout":
            if batch:
                r["vs_batch_generate"] = r["tok_s"] / batch["tok_s"]
                r["decode_vs_batch_generate"] = _ratio(r["decode_tok_s"], batch["decode_tok_s"])
            if floor:
                r["of_floor"] = _ratio(r["decode_tok_s"], floor["tok_s"])
        elif r["kind"] == "step" and ours and key in ("mlx-lm-lora", "trl", "trl-ckpt"):
            r["ours_faster_by"] = r["step_s"] / ours["step_s"]
        base = ok.get(key.removesuffix("-refblas"))
        if key.endswith("-refblas") and base:
            seconds = "wall_s" if r["kind"] == "rollout" else "step_s"
            r["openblas_faster_by"] = r[seconds] / base[seconds]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# --- the table -------------------------------------------------------------------------------
def _fmt(value) -> str:
    """Numbers for the table: 1,234 / 12.34 / 0.0123 (three significant digits below 1)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in lines
    )


def render(report: dict) -> str:
    lines = _render_machine(report)
    notes = []
    for name, shape in report["shapes"].items():
        lines += _render_shape(name, shape)
        notes += [
            f"{name} / {r['label']}{' (reference BLAS)' if r['blas'] == 'reference' else ''}: "
            f"{r['status']}: {r.get('note', '')}"
            for r in shape["results"].values()
            if r.get("status") != "ok"
        ]
    if notes:
        lines += ["", "not measured:", *(f"  {n}" for n in notes)]
    return "\n".join(lines)


def _render_machine(report: dict) -> list[str]:
    m, probe = report["machine"], report["machine"]["mlx"]
    lines = [
        f"mlx-grpo benchmark, {report['date']}",
        f"machine: {m['cpu']}, {m['cores']} cores, {_fmt(m['memory_gib'])} GiB; {m['platform']}; Python {m['python']}",
    ]
    if probe.get("status") != "ok":
        return lines + [f"machine probe {probe.get('status')}: {probe.get('note', '')}"]
    rates = ", ".join(f"{_fmt(v)} GFLOP/s at n={n}" for n, v in probe["matmul_gflops"].items())
    lines += [
        f"MLX {probe['mlx']} on {probe['device']}; BLAS: {probe['blas']}",
        f"memory copy {_fmt(probe['copy_gb_s']['numpy'])} GB/s (an MLX op: {_fmt(probe['copy_gb_s']['mlx'])} "
        f"GB/s); fp32 matmul {rates}",
    ]
    ref = m.get("mlx_reference_blas", {})
    if ref.get("status") == "ok":
        fast, slow = probe["matmul_gflops"]["1024"], ref["matmul_gflops"]["1024"]
        lines.append(
            f"without OpenBLAS ({ref['blas']}): fp32 matmul {_fmt(slow)} GFLOP/s at n=1024, "
            f"OpenBLAS {fast / slow:.0f}x faster"
        )
    return lines


def _render_shape(name: str, shape: dict) -> list[str]:
    w, res = shape["workload"], shape["results"]
    lines = [
        "",
        f"== {name}: {shape['description']}; {len(TASKS)} prompts x {w['group_size']} completions x "
        f"{w['max_tokens']} tokens; median of {w['repeats']} after {w['warmup']} warm-up",
    ]
    rollouts = [r for r in res.values() if r["kind"] == "rollout" and r["blas"] != "reference"]
    steps = [r for r in res.values() if r["kind"] == "step" and r["blas"] != "reference"]
    refs = [r for r in res.values() if r["blas"] == "reference"]
    if rollouts:
        lines += [
            "",
            format_table(
                [
                    "rollout",
                    "prompt tok",
                    "wall s",
                    "tok/s",
                    "decode tok/s",
                    "prefill s",
                    "vs batch_generate",
                    "decode vs batch_gen",
                    "of floor",
                    "MLX peak GiB",
                    "RSS peak GiB",
                ],
                [
                    [
                        _label(r),
                        _fmt(r.get("prompt_tokens")),
                        _fmt(r.get("wall_s")),
                        _fmt(r.get("tok_s")),
                        _fmt(r.get("decode_tok_s")),
                        _fmt(r.get("prefill_s")),
                        _x(r.get("vs_batch_generate")),
                        _x(r.get("decode_vs_batch_generate")),
                        _pct(r.get("of_floor")),
                        _fmt(r.get("peak_mx_gib")),
                        _fmt(r.get("peak_rss_gib")),
                    ]
                    for r in rollouts
                ],
            ),
        ]
    if steps:
        lines += [
            "",
            format_table(
                [
                    "GRPO step",
                    "prompt tok",
                    "step s",
                    "generate s",
                    "score s",
                    "update s",
                    "mlx-grpo faster by",
                    "MLX peak GiB",
                    "RSS peak GiB",
                ],
                [
                    [
                        _label(r),
                        _fmt(r.get("prompt_tokens")),
                        _fmt(r.get("step_s")),
                        _fmt(r.get("generate_s")),
                        _fmt(r.get("score_s")),
                        _fmt(r.get("update_s")),
                        _x(r.get("ours_faster_by")),
                        _fmt(r.get("peak_mx_gib")),
                        _fmt(r.get("peak_rss_gib")),
                    ]
                    for r in steps
                ],
            ),
        ]
    if refs:
        lines += [
            "",
            format_table(
                ["reference BLAS (no preload)", "seconds", "OpenBLAS faster by"],
                [[r["label"], _fmt(r.get("wall_s", r.get("step_s"))), _x(r.get("openblas_faster_by"))] for r in refs],
            ),
        ]
    if shape.get("floor"):
        f = shape["floor"]
        lines.append(
            f"\ndecode floor at {len(TASKS) * w['group_size']} rows: {_fmt(f['gb_per_step'])} GB read + "
            f"{_fmt(f['gflop_per_step'])} GFLOP per step at {_fmt(f['bandwidth_gb_s'])} GB/s and "
            f"{_fmt(f['matmul_gflops'])} GFLOP/s -> {_fmt(f['step_s'])} s per step = {_fmt(f['tok_s'])} tok/s"
        )
    return lines


def _label(result: dict) -> str:
    return result["label"] + (f" ({result['version']})" if result.get("version") else "")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


# --- main ------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", default="tiny,qwen3-0.6b", help=f"comma-separated, of: {', '.join(SHAPES)}")
    p.add_argument("--quick", action="store_true", help="fewer timed runs; no reference-BLAS runs")
    p.add_argument(
        "--full",
        action="store_true",
        help="also the slow 0.6B runs: peers' steps (minutes each), our step, the 4 x 8 x 512 step",
    )
    p.add_argument("--only", type=lambda s: set(s.split(",")), help="job ids, e.g. ours-rollout,mlx-lm-batch,trl")
    p.add_argument("--warmup", type=int, help="untimed runs before the timed ones (default: per shape)")
    p.add_argument("--repeats", type=int, help="timed runs; the median is reported (default: per shape)")
    p.add_argument(
        "--trl-python",
        default=os.environ.get("MLX_GRPO_BENCH_TRL_PYTHON"),
        help="python of a venv with torch, trl, peft (env MLX_GRPO_BENCH_TRL_PYTHON)",
    )
    p.add_argument(
        "--mlx-lm-lora-python",
        default=os.environ.get("MLX_GRPO_BENCH_MLX_LM_LORA_PYTHON"),
        help="python of a venv with mlx-lm-lora (env MLX_GRPO_BENCH_MLX_LM_LORA_PYTHON)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-grpo-bench",
        help="model folders (built once) and each run's specs, results and logs",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per contender")
    p.add_argument("--json", type=Path, help="also write the full results here")
    args = p.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    run_dir = args.cache_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "run_dir": str(run_dir),
        "workload": WORKLOAD,
        "machine": probe_machine(args, run_dir, args.timeout),
        "shapes": {},
    }
    for name in args.shapes:
        shape = SHAPES[name]
        model_dir = build_model(shape, args.cache_dir)
        config = json.loads((model_dir / "config.json").read_text())
        results = {}
        for job in plan(shape, args):
            spec = make_spec(shape, job, model_dir, args)
            print(f"[{name}] {job.id} ...", end=" ", flush=True)
            results[job.id] = {
                "label": job.label,
                "kind": job.kind,
                "blas": job.blas,
                "group_size": spec["group_size"],
                "max_tokens": spec["max_tokens"],
                **run_job(job, spec, run_dir, args.timeout),
            }
            print(results[job.id]["status"], flush=True)
        probe = report["machine"]["mlx"]
        rows = len(TASKS) * WORKLOAD["group_size"]
        floor = decode_floor(config, rows, probe) if probe.get("status") == "ok" else None
        derive(results, floor)
        report["shapes"][name] = {
            "description": shape.description,
            "model_dir": str(model_dir),
            "config": config,
            "workload": {**WORKLOAD, **timing(shape, args)},
            "floor": floor,
            "results": results,
        }
    text = render(report)
    print("\n" + text)
    (run_dir / "report.txt").write_text(text + "\n")
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
