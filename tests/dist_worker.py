"""One process of a data-parallel test run: `python tests/dist_worker.py SETTINGS_JSON`.

tests/test_distributed.py starts it once (a 1-rank run) or twice with MLX_RANK / MLX_HOSTFILE set
(the ring backend on localhost, as `mlx.launch` does). It trains with the real loop and the real
EpisodeSource, sampling in calls of `groups_per_call` groups, then saves this rank's adapters.
"""

from __future__ import annotations

import json
import sys

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_grpo import distributed, trainer
from mlx_grpo.config import TrainConfig
from mlx_grpo.episodes import EpisodeSource
from mlx_grpo.errors import UserError


def main(settings: dict) -> None:
    config = TrainConfig(**settings["config"])
    training = trainer.prepare(config, resume=settings.get("resume", False))
    source = EpisodeSource(
        training.model,
        training.tokenizer,
        training.train_tasks,
        config,
        training.reward_set,
        groups_per_call=settings.get("groups_per_call"),
    )
    trainer.run(training, source=source, progress=False)
    adapters = dict(tree_flatten(training.model.trainable_parameters()))
    mx.save_safetensors(settings["adapters"].format(rank=distributed.rank()), adapters)


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
