"""A run's report: per-step plots and chosen completions in one self-contained HTML page.

The run directory's `metrics.jsonl` and `completions.jsonl` are the only sources, and they are only
read, so a report can be made while the run is still writing them (a half-written last line is
skipped). The page needs no network: CSS is inline, plots are PNGs embedded as `data:` URIs, and all
model text goes through `html.escape`, so a completion that contains `<script>` shows as text.

    build_report("runs/countdown")  # -> runs/countdown/report.html, PNGs in runs/countdown/plots/
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from mlx_grpo import plots
from mlx_grpo.countdown import notation
from mlx_grpo.countdown.selfcheck import REJECTION_LINE, is_self_check
from mlx_grpo.errors import UserError
from mlx_grpo.plots import Series
from mlx_grpo.rundir import PLOTS, REPORT, Run, read_run, write_text

# The R1 paper's "aha moment" shows up as the model second-guessing itself in words like these.
DEFAULT_PHRASES = ("wait", "let me check", "verify", "try again", "instead")

# (file stem, function of the metrics rows) for every figure drawn from metrics.jsonl, in page order.
METRIC_PLOTS = (
    ("aha", plots.plot_aha),
    ("reward", plots.plot_reward),
    ("accuracy", plots.plot_accuracy),
    ("format_rate", plots.plot_format_rate),
    ("completion_length", plots.plot_completion_length),
    ("truncated", plots.plot_truncated),
    ("kl", plots.plot_kl),
    ("clip_frac", plots.plot_clip_frac),
    ("zero_adv", plots.plot_zero_adv),
)
REFLECTION_PLOT = "reflection"

# config.json fields shown in the page header, when present.
KEY_CONFIG = (
    "model",
    "dataset",
    "num_samples",
    "max_steps",
    "batch_size",
    "num_generations",
    "max_completion_length",
    "temperature",
    "rewards",
    "loss_type",
    "beta",
    "epsilon",
    "learning_rate",
    "lora_rank",
    "seed",
)
# Last-step metrics shown in the header, when present.
FINAL_METRICS = (
    "reward",
    "accuracy",
    "format_rate",
    "self_check_rate",
    "completion_length/mean",
    "truncated_frac",
    "zero_adv_frac",
    "kl",
    "tokens_per_s",
)


def phrase_pattern(phrases: list[str] | tuple[str, ...]) -> re.Pattern:
    """Case-insensitive match of any phrase as whole words; inner spaces match any whitespace.

    Example: phrase_pattern(["let me check"]) matches "Let me\\ncheck" but not "outlet me checked".
    """
    words = [p.split() for p in phrases]
    if not phrases or not all(words):
        raise UserError("reflection phrases must be non-empty, e.g. --phrases 'wait,let me check'")
    alternatives = "|".join(r"\s+".join(map(re.escape, w)) for w in words)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def reflection_rates(completions: list[dict], phrases: list[str] | tuple[str, ...]) -> dict[str, Series]:
    """Per step, the fraction of logged completions containing any phrase, then each phrase alone.

    Returns:
        {"any phrase": Series, "<phrase>": Series, ...}; steps are those with logged completions.
    """
    patterns = {"any phrase": phrase_pattern(phrases)} | {p: phrase_pattern([p]) for p in phrases}
    by_step: dict[int, list[str]] = {}
    for row in completions:
        by_step.setdefault(row["step"], []).append(str(row.get("completion", "")))
    steps = sorted(by_step)
    return {
        label: Series(steps, [sum(bool(pat.search(t)) for t in by_step[s]) / len(by_step[s]) for s in steps])
        for label, pat in patterns.items()
    }


def is_correct(row: dict) -> bool:
    """A logged completion is correct when its equation reward is 1."""
    return (row.get("rewards") or {}).get("equation") == 1.0


def first_self_correction(completions: list[dict]) -> dict | None:
    """The first logged completion (by step, then file order) that rejects a candidate of its own
    against the target, tries another (`countdown.selfcheck`) and is correct; None if there is none."""
    found = [r for r in completions if is_correct(r) and is_self_check(str(r.get("completion", "")), r.get("target"))]
    return min(found, key=lambda r: r["step"]) if found else None


def pick_samples(completions: list[dict]) -> list[tuple[str, dict]]:
    """Completions that show the change: first step, first correct, last step, longest correct.

    The first and last step's picks are the first completion logged at that step (not the best one,
    so they show what the model typically wrote). A completion picked twice appears once, with both
    labels, e.g. "first correct, longest correct". Returns (label, row) pairs in page order.
    """
    if not completions:
        return []
    first, last = min(r["step"] for r in completions), max(r["step"] for r in completions)
    correct = [r for r in completions if is_correct(r)]
    picks = [
        ("first step", next(r for r in completions if r["step"] == first)),
        ("first correct", min(correct, key=lambda r: r["step"]) if correct else None),
        ("last step", next(r for r in completions if r["step"] == last)),
        ("longest correct", max(correct, key=lambda r: len(str(r.get("completion", "")))) if correct else None),
    ]
    merged: dict[int, tuple[list[str], dict]] = {}
    for label, row in picks:
        if row is not None:
            merged.setdefault(id(row), ([], row))[0].append(label)
    return [(", ".join(labels), row) for labels, row in merged.values()]


def write_plots(run: Run, plots_dir: str | Path, phrases=DEFAULT_PHRASES) -> dict[str, Path]:
    """Draw every figure of the run into `plots_dir` as `<name>.png`; returns name -> path in page order."""
    plots_dir = Path(plots_dir)
    paths = {name: draw(run.metrics, plots_dir / f"{name}.png") for name, draw in METRIC_PLOTS}
    rates = reflection_rates(run.completions, phrases)
    paths[REFLECTION_PLOT] = plots.plot_reflection(rates, plots_dir / f"{REFLECTION_PLOT}.png")
    return paths


def build_report(run_dir: str | Path, output: str | Path | None = None, phrases=DEFAULT_PHRASES) -> Path:
    """Write the run's plots to `RUN_DIR/plots/` and its HTML report to `output` (default RUN_DIR/report.html).

    Raises UserError for a missing run directory, a run with no metrics yet, or empty phrases.
    """
    phrase_pattern(phrases)  # fail on bad phrases before drawing anything
    run = read_run(run_dir, adapters=False)
    if not run.metrics:
        raise UserError(f"no metrics in {run.path} (metrics.jsonl is missing or empty): has the run logged a step yet?")
    pngs = write_plots(run, run.path / PLOTS, phrases)
    output = Path(output) if output is not None else run.path / REPORT
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text(output, render_html(run, pngs, phrases))
    return output


def render_html(run: Run, pngs: dict[str, Path], phrases=DEFAULT_PHRASES) -> str:
    """The whole page as one string; `pngs` (name -> PNG path) are embedded, not linked."""
    title = f"mlx-grpo report: {run.path.name}"
    sections = [_header_html(run), _self_correction_html(run.completions), _plots_html(pngs)]
    body = "\n".join(sections + [_completions_html(run.completions, phrases)])
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _header_html(run: Run) -> str:
    train_rows = [r for r in run.metrics if "reward" in r]
    last = max(train_rows, key=lambda r: r["step"]) if train_rows else {}
    evals = plots.series(run.metrics, "eval/accuracy")
    config = run.train_config
    max_steps = config.get("max_steps")
    progress = f"step {last.get('step', 0)}" + (f" of {max_steps}" if max_steps else "")
    config_rows = [(k, config[k]) for k in KEY_CONFIG if k in config]
    final_rows = [(k, last[k]) for k in FINAL_METRICS if k in last]
    if evals.steps:
        final_rows.append((f"eval/accuracy (step {evals.steps[-1]})", evals.values[-1]))
        final_rows.append(("best eval/accuracy", max(evals.values)))
    full_config = (
        f"<details><summary>full config.json</summary><pre>{_esc(json.dumps(config, indent=2))}</pre></details>"
        if config
        else "<p class=muted>no config.json in the run directory</p>"
    )
    return (
        f'<header id="summary"><h1>{_esc(run.path.name)}</h1>\n'
        f"<p class=muted>{_esc(str(run.path.resolve()))} &middot; model {_esc(run.base_model or 'unknown')} &middot; {_esc(progress)}</p>\n"
        f"<div class=tables><div><h2>Final metrics</h2>{_table(final_rows)}</div>"
        f"<div><h2>Key config</h2>{_table(config_rows)}</div></div>\n{full_config}</header>"
    )


def _plots_html(pngs: dict[str, Path]) -> str:
    figures = "\n".join(
        f'<figure><img alt="{_esc(name)}" src="data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()}">'
        f"<figcaption>{_esc(name)}</figcaption></figure>"
        for name, p in pngs.items()
    )
    return f'<section id="plots"><h2>Plots</h2><div class=grid>\n{figures}\n</div></section>'


def _completions_html(completions: list[dict], phrases) -> str:
    samples = pick_samples(completions)
    if not samples:
        cards = "<p class=muted>no completions logged yet (completions.jsonl is missing or empty)</p>"
    else:
        pattern = phrase_pattern(phrases)
        cards = "\n".join(_card(label, row, pattern) for label, row in samples)
    return f'<section id="completions"><h2>Sampled completions</h2>\n{cards}\n</section>'


def _self_correction_html(completions: list[dict]) -> str:
    row = first_self_correction(completions)
    card = (
        _card("rejects its own candidate, then finds the answer", row, REJECTION_LINE)
        if row is not None
        else "<p class=muted>no logged completion yet rejects a candidate of its own and then solves the task</p>"
    )
    return f'<section id="self-correction"><h2>First self-correction</h2>\n{card}\n</section>'


def _card(label: str, row: dict, pattern: re.Pattern) -> str:
    rewards = ", ".join(f"{_esc(k)} {_fmt(v)}" for k, v in (row.get("rewards") or {}).items())
    equation = row.get("equation")
    facts = [
        f"step {row['step']}",
        f"target {_esc(str(row.get('target')))} from {_esc(str(row.get('nums')))}",
        f"reward {_fmt(row.get('reward'))}" + (f" ({rewards})" if rewards else ""),
        f"advantage {_fmt(row.get('advantage'))}",
        "equation " + (f"<code>{_esc(str(equation))}</code>" if equation else "none parsed"),
    ]
    verdict = "ok" if is_correct(row) else "bad"
    completion = str(row.get("completion", ""))
    readable = notation.readable(completion)
    translation = (
        f"<p class=muted>the thought writes digits backwards (countdown.notation); read the usual way:</p>"
        f"<pre class=completion>{_highlight(readable, pattern)}</pre>"
        if readable != completion
        else ""
    )
    return (
        f'<article class="card {verdict}"><h3>{_esc(label)}</h3><p>{" &middot; ".join(facts)}</p>\n'
        f"<details><summary>prompt</summary><pre>{_esc(str(row.get('prompt', '')))}</pre></details>\n"
        f"<pre class=completion>{_highlight(completion, pattern)}</pre>{translation}</article>"
    )


def _highlight(text: str, pattern: re.Pattern) -> str:
    """Escape `text`, wrapping each reflection phrase in <mark>."""
    out, pos = [], 0
    for m in pattern.finditer(text):
        out += [_esc(text[pos : m.start()]), f"<mark>{_esc(m.group())}</mark>"]
        pos = m.end()
    return "".join(out + [_esc(text[pos:])])


def _table(rows: list[tuple[str, object]]) -> str:
    if not rows:
        return "<p class=muted>none</p>"
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1160px;padding:16px 20px;color:#1d2330;background:#fafbfc}
h1{margin:.2em 0}h2{margin:.8em 0 .4em;font-size:1.25em}h3{margin:0 0 .3em;font-size:1.05em}
.muted{color:#667}.tables{display:flex;gap:32px;flex-wrap:wrap}
table{border-collapse:collapse;font-size:.92em}th,td{padding:3px 10px;border-bottom:1px solid #e3e6ea;text-align:left}
th{font-weight:600;color:#445}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:6px}
figure img{width:100%;height:auto;display:block}figcaption{font-size:.8em;color:#667;text-align:center}
.card{background:#fff;border:1px solid #e3e6ea;border-left:5px solid #c44;border-radius:6px;padding:10px 14px;margin:10px 0}
.card.ok{border-left-color:#2a2}.card p{margin:.2em 0 .5em;font-size:.92em}
pre{white-space:pre-wrap;word-break:break-word;background:#f3f4f6;padding:8px;border-radius:4px;font-size:.88em;margin:.3em 0}
mark{background:#ffe28a}code{background:#eef;padding:0 4px;border-radius:3px}
"""
