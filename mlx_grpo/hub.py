"""Publish a run on the Hugging Face Hub: stage the exact folder to upload, then upload it.

`stage_run` builds the repo's folder from a run directory (adapters, PEFT adapters, or a fused
model; plus model card, training config, final metrics and plots) in a folder of its own; the
run directory is only read. `push_run` stages into a fresh temp folder, checks that the token is in
none of its files (dry runs too), and uploads with `HfApi.create_repo` + `upload_folder`. Every Hub failure
becomes a one-line UserError with the token scrubbed out; `export_run` writes the same folder to
a local path instead (what `mlx-grpo fuse` does).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlx_grpo import __version__
from mlx_grpo.card import base_hub_id, model_card, read_metrics, summarize_metrics
from mlx_grpo.errors import UserError
from mlx_grpo.export import fuse_into_model, write_peft
from mlx_grpo.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, METRICS, PLOTS, Run, read_run

FORMATS = ("mlx", "peft")
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")


@dataclass(frozen=True)
class PushResult:
    """What `push_run` did: the repo, its URL, the files, and the staged folder (dry runs only)."""

    repo_id: str
    url: str
    files: list[str]
    uploaded: bool
    folder: Path | None = None  # kept for a dry run; removed after a real upload


def check_options(*, fuse: bool, quantize: int | None, fmt: str, dequantize: bool = False) -> None:
    """Reject option combinations that mean nothing, before any model is loaded."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if quantize not in (None, 4, 8):
        raise UserError(f"--quantize must be 4 or 8 (got {quantize!r})")
    if fuse and fmt == "peft":
        raise UserError("--fuse and --format peft do not combine: a fused model has no adapters to convert")
    if (quantize is not None or dequantize) and not fuse:
        raise UserError("--quantize and --dequantize apply to a fused model: add --fuse")


def check_repo_id(repo_id: str) -> None:
    """A Hub model repo id of the form USER/NAME, or a one-line UserError."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"invalid --repo-id {repo_id!r}: {e}") from None
    if repo_id.count("/") != 1:
        raise UserError(f"invalid --repo-id {repo_id!r}: expected USER/NAME")


def stage_run(
    run: Run,
    dest: Path,
    *,
    repo: str,
    fuse: bool = False,
    quantize: int | None = None,
    dequantize: bool = False,
    fmt: str = "mlx",
    trust_remote_code: bool = False,
    base_model_id: str | None = None,
) -> list[str]:
    """Write the folder a Hub repo of this run holds into `dest`; return its files (relative).

    `repo` is the Hub id (or, for a local export, the final folder) the model card points users to;
    `base_model_id` the base's Hub id when the run loaded a local copy of it (see `card.base_hub_id`).

    Layout: the model files (mlx adapters, PEFT adapters, or a fused model), README.md (the card),
    training_config.json (the run's config.json, renamed so it cannot clash with a fused model's
    config.json), final_metrics.json and plots/*.png when the run has them.
    """
    dest.mkdir(parents=True, exist_ok=True)
    quantization = None
    if fuse:
        fuse_into_model(run, dest, quantize=quantize, dequantize=dequantize, trust_remote_code=trust_remote_code)
        quantization = json.loads((dest / "config.json").read_text()).get("quantization")
    elif fmt == "peft":
        write_peft(run, dest, base_hub_id(run, base_model_id))
    else:
        shutil.copyfile(run.path / ADAPTER_WEIGHTS, dest / ADAPTER_WEIGHTS)
        _write_adapter_config(run, dest / ADAPTER_CONFIG, base_hub_id(run, base_model_id))
    if run.train_config:
        (dest / "training_config.json").write_text(json.dumps(run.train_config, indent=2) + "\n")
    metrics = summarize_metrics(read_metrics(run.path / METRICS))
    if metrics:
        (dest / "final_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plots = sorted((run.path / PLOTS).glob("*.png"))
    if plots:
        (dest / "plots").mkdir(exist_ok=True)
        for plot in plots:
            shutil.copyfile(plot, dest / "plots" / plot.name)
    kind = "fused" if fuse else ("peft" if fmt == "peft" else "adapters")
    card = model_card(
        run,
        kind=kind,
        repo=repo,
        metrics=metrics,
        plots=[f"plots/{p.name}" for p in plots],
        base_model_id=base_model_id,
        quantization=quantization,
    )
    (dest / "README.md").write_text(card)
    return list_files(dest)


def _write_adapter_config(run: Run, path: Path, base_id: str | None) -> None:
    """The run's adapter config naming its base by Hub id; a local base's path is left out."""
    config = {key: value for key, value in run.adapter_config.items() if key != "base_model"}
    if base_id:
        config["base_model"] = base_id
    path.write_text(json.dumps(config, indent=2) + "\n")


def list_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    fuse: bool = False,
    quantize: int | None = None,
    fmt: str = "mlx",
    dry_run: bool = False,
    token: str | None = None,
    model: str | None = None,
    dequantize: bool = False,
    trust_remote_code: bool = False,
    base_model_id: str | None = None,
) -> PushResult:
    """Upload a run directory to the Hub as a model repo (adapters by default).

    Args:
        run_dir: the folder `mlx-grpo train` wrote; only read.
        repo_id: USER/NAME; created if missing (with `private`), reused if it exists.
        fuse, quantize, dequantize: upload a fused MLX model (optionally 4/8-bit) instead of adapters.
        fmt: "mlx" (mlx-lm adapters) or "peft" (PEFT adapters for transformers users).
        dry_run: stage only; the staged folder is kept and returned, nothing is uploaded.
        token: a Hub token; default: HF_TOKEN or the stored login. Never written or printed.
        model: base model override (default: the one the run recorded).
        base_model_id: the base's Hub id, for a run trained on a local copy of a Hub model.

    Raises:
        UserError: bad input, no token, or any Hub failure (auth, missing repo, network).
    """
    check_repo_id(repo_id)
    check_options(fuse=fuse, quantize=quantize, fmt=fmt, dequantize=dequantize)
    run = read_run(run_dir, model=model)
    base_hub_id(run, base_model_id)  # a bad --base-model-id fails before any model is loaded
    token = _resolve_token(token, required=not dry_run)
    staged = Path(tempfile.mkdtemp(prefix="mlx-grpo-push-"))
    keep = False
    try:
        files = stage_run(
            run,
            staged,
            repo=repo_id,
            fuse=fuse,
            quantize=quantize,
            dequantize=dequantize,
            fmt=fmt,
            trust_remote_code=trust_remote_code,
            base_model_id=base_model_id,
        )
        if token:
            _check_token_absent(staged, token)
        if dry_run:
            keep = True
            return PushResult(repo_id, f"https://huggingface.co/{repo_id}", files, uploaded=False, folder=staged)
        url = _upload(staged, repo_id, private=private, token=token)
        return PushResult(repo_id, url, files, uploaded=True)
    finally:
        if not keep:
            shutil.rmtree(staged, ignore_errors=True)


def export_run(
    run_dir: str | Path,
    output: str | Path,
    *,
    overwrite: bool = False,
    model: str | None = None,
    fuse: bool = False,
    quantize: int | None = None,
    dequantize: bool = False,
    fmt: str = "mlx",
    trust_remote_code: bool = False,
    base_model_id: str | None = None,
) -> list[str]:
    """Stage a run into the local folder `output` (as `push_run` would upload it); return its files.

    The folder is written next to `output` and renamed into place, so a failure leaves no partial
    model; an existing non-empty `output` is replaced only with `overwrite`, and never when it is
    (or contains) the run directory or the base model.
    """
    check_options(fuse=fuse, quantize=quantize, fmt=fmt, dequantize=dequantize)
    run = read_run(run_dir, model=model)
    base_hub_id(run, base_model_id)
    output = Path(output).expanduser().resolve()
    _check_output(output, run, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp: the folder keeps the user's umask (mkdtemp's is 0700), as mlx_lm.fuse's does.
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir()
    try:
        files = stage_run(
            run,
            partial,
            repo=str(output),
            fuse=fuse,
            quantize=quantize,
            dequantize=dequantize,
            fmt=fmt,
            trust_remote_code=trust_remote_code,
            base_model_id=base_model_id,
        )
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            output.rename(old)
            partial.rename(output)
            shutil.rmtree(old)
        else:
            partial.rename(output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return files


def _check_output(output: Path, run: Run, overwrite: bool) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise UserError(f"--output {output} exists and is not a folder")
    protected = [run.path.resolve()] + ([Path(run.base_model).resolve()] if Path(run.base_model).exists() else [])
    if any(p == output or output in p.parents for p in protected):
        raise UserError(f"--output {output} would replace the run directory or the base model")
    if any(output.iterdir()) and not overwrite:
        raise UserError(f"--output {output} is not empty (pass --overwrite to replace it)")


# --- the network boundary ------------------------------------------------------------------------


def _resolve_token(token: str | None, *, required: bool) -> str | None:
    """The given token, else huggingface_hub's own lookup (HF_TOKEN, then the stored login)."""
    from huggingface_hub import get_token

    try:
        token = token or get_token()
    except Exception as e:  # e.g. a failed OIDC exchange; its text may quote the credential
        if required:
            raise UserError(f"cannot read the Hugging Face token: {type(e).__name__}") from None
        return None
    if required and not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run)")
    return token


def _check_token_absent(folder: Path, token: str, chunk: int = 1 << 20) -> None:
    needle = token.encode()
    for name in list_files(folder):
        with open(folder / name, "rb") as f:
            tail = b""
            while block := f.read(chunk):  # chunked: a fused model can be larger than memory
                if needle in tail + block:
                    raise UserError(f"refusing to upload: {name} contains the Hugging Face token")
                tail = block[-len(needle) :]


def _upload(folder: Path, repo_id: str, *, private: bool, token: str) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, HTTPError

    api = HfApi(token=token, library_name="mlx-grpo", library_version=__version__)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="Upload GRPO-trained model with mlx-grpo",
        )
    except (HTTPError, OSError, HFValidationError) as e:  # HTTP status, transport, offline mode
        raise UserError(hub_error_message(e, repo_id, token)) from None
    return f"{api.endpoint.rstrip('/')}/{repo_id}"


def hub_error_message(error: Exception, repo_id: str, token: str | None) -> str:
    """One line saying what went wrong with the Hub and what to do, with no credential in it."""
    from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    status = getattr(getattr(error, "response", None), "status_code", None)
    transport = isinstance(error, HTTPError) and not isinstance(error, HfHubHTTPError)  # no HTTP answer at all
    if isinstance(error, RepositoryNotFoundError) or status == 404:
        what = f"repository {repo_id} not found, or the token cannot see it"
    elif status == 401:
        what = "authentication failed (401): the token is invalid or expired; set HF_TOKEN or run `hf auth login`"
    elif status == 403:
        what = f"permission denied (403) for {repo_id}: the token needs write access to that namespace"
    elif isinstance(error, OfflineModeIsEnabled):
        what = "HF_HUB_OFFLINE is set; unset it to upload"
    elif transport or isinstance(error, (ConnectionError, TimeoutError)):
        what = f"cannot reach the Hub (network down?): {type(error).__name__}: {error}"
    else:
        what = f"{type(error).__name__}: {error}"
    return f"upload to {repo_id} failed: {scrub(what, token)[:400]} (the run directory was not changed)"


def scrub(text: str, token: str | None) -> str:
    """`text` with the token, and anything shaped like a Hub token, masked."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("hf_***", text)
