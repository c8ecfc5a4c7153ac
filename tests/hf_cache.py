"""A local Hugging Face cache (HF_HOME) laid out as a Mac user's is after a first, online run.

The README's command names `Qwen/Qwen3-0.6B` and `Jiayi-Pan/Countdown-Tasks-3to4`; offline
(HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1) the libraries resolve those ids from two caches, as the
installed versions do it (huggingface_hub 2.4, datasets 5.2):

- the model: `HF_HOME/hub/models--Qwen--Qwen3-0.6B/`, where `refs/main` holds the commit hash and
  `snapshots/<commit>/<file>` links to `blobs/<sha256>`. `snapshot_download` (which `mlx_lm.load`
  calls) reads `refs/main` and returns the snapshot folder; with no cached tree listing of the repo
  it cannot tell a partial snapshot, so it returns it as it is.
- the dataset: `datasets.load_dataset(id)` does not read the hub cache offline; it loads the
  prepared Arrow copy that its builder left in `HF_HOME/datasets/Jiayi-Pan___countdown-tasks-3to4/
  default/0.0.0/<commit>/` (namespace, `___`, the snake-cased name, config, version, revision).
  Here `datasets`' own Parquet builder writes that folder from a Parquet file of the rows, as it
  does from the repo's Parquet file when the user is online.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_grpo.modelgen import init_qwen3

MODEL_ID = "Qwen/Qwen3-0.6B"
DATASET_ID = "Jiayi-Pan/Countdown-Tasks-3to4"
# Qwen3-0.6B's config.json with small dims; every other key (vocab, rope, tied embeddings) is kept.
TINY_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "max_window_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json", "LICENSE")


def cache_tiny_qwen3(hf_home: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Cache a random-weight Qwen3 in Qwen3-0.6B's layout as `Qwen/Qwen3-0.6B`; return its snapshot folder.

    Args:
        hf_home: the HF_HOME to fill (its `hub/` folder).
        tokenizer_dir: Qwen3-0.6B's config.json, tokenizer files and chat template.
    """
    config = json.loads((tokenizer_dir / "config.json").read_text()) | TINY_DIMS
    model = init_qwen3(config, seed=seed)
    weights = {name: w.astype(mx.bfloat16) for name, w in tree_flatten(model.parameters())}  # stored as the Hub's
    files = {name: (tokenizer_dir / name).read_bytes() for name in TOKENIZER_FILES}
    files["config.json"] = (json.dumps(config, indent=2) + "\n").encode()
    files["model.safetensors"] = _safetensors_bytes(weights, hf_home)
    return _write_repo(hf_home / "hub" / f"models--{MODEL_ID.replace('/', '--')}", files)


def cache_countdown(hf_home: Path, rows: list[dict]) -> Path:
    """Prepare `rows` ({"target", "nums"} dicts) as `datasets`' offline copy of the Countdown dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = DATASET_ID.split("/")
    staging = hf_home / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    parquet = staging / "train-00000-of-00001.parquet"  # the file the Hub repo holds
    pq.write_table(pa.table({"target": [r["target"] for r in rows], "nums": [r["nums"] for r in rows]}), parquet)
    datasets_cache = hf_home / "datasets"
    revision = _commit_hash(parquet.read_bytes())
    prepared = datasets_cache / f"{namespace}___{camelcase_to_snakecase(name)}" / "default" / "0.0.0" / revision
    builder = Parquet(
        cache_dir=str(datasets_cache),
        dataset_name=camelcase_to_snakecase(name),
        config_name="default",
        data_files={"train": [str(parquet)]},
    )
    builder.download_and_prepare(output_dir=str(prepared))
    shutil.rmtree(staging)
    return prepared


def _write_repo(repo: Path, files: dict[str, bytes]) -> Path:
    """huggingface_hub's cache layout: blobs by content hash, a snapshot of links, refs/main."""
    commit = _commit_hash(b"".join(hashlib.sha256(files[n]).digest() for n in sorted(files)))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _safetensors_bytes(weights: dict, scratch: Path) -> bytes:
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "model.safetensors"
    mx.save_safetensors(str(path), weights, metadata={"format": "pt"})
    data = path.read_bytes()
    path.unlink()
    return data


def _commit_hash(content: bytes) -> str:
    """A 40-hex revision, fixed by the content (a stand-in for the Hub's git commit)."""
    return hashlib.sha1(content).hexdigest()
