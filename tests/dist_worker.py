"""One process of a data-parallel test run: `python tests/dist_worker.py SETTINGS_JSON`.

tests/test_distributed.py starts it once (a 1-rank run) or twice with MLX_RANK / MLX_HOSTFILE set
(the ring backend on localhost, as `mlx.launch` does). It trains with the real loop and the real
EpisodeSource (inside the real DynamicSource with `dynamic_sampling`), sampling in calls of
`groups_per_call` groups, then saves this rank's adapters. With "record" it also writes what this
rank saw each step: the rows it trained on and the global RNG key of each LoRA dropout draw, in order.
With "interrupt" one rank sends itself a Ctrl-C after a given step, and each rank writes the step it
stopped after to "interrupted".
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import defaultdict

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlx_grpo import distributed, trainer
from mlx_grpo.config import TrainConfig
from mlx_grpo.dynamic import DynamicSource
from mlx_grpo.episodes import EpisodeSource
from mlx_grpo.errors import UserError


class Recorder:
    """Wraps the episode source and the LoRA layers' dropout: per step, the rows and the keys."""

    def __init__(self, source, model):
        self.source, self.step = source, None
        self.rows, self.keys = {}, defaultdict(list)
        _KeyedDropout.recorder = self
        for _, module in model.named_modules():
            if hasattr(module, "lora_a"):  # the same module (and parameter tree), one more line
                module.dropout.__class__ = _KeyedDropout

    def __call__(self, step: int):
        self.step = step
        episodes = self.source(step)
        self.rows[step] = episodes.num_rows
        return episodes


class _KeyedDropout(nn.Dropout):
    recorder = None  # a class attribute: a module's own attributes join its parameter tree

    def __call__(self, x):
        if self.training and self._p_1 < 1:  # the key the draw is about to split: it fixes the mask
            self.recorder.keys[self.recorder.step].append(np.array(mx.random.state[0]).tolist())
        return super().__call__(x)


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
    if config.dynamic_sampling:
        source = DynamicSource(source, config.dynamic_sampling_signal, config.max_sampling_rounds)
    if settings.get("record"):
        source = Recorder(source, training.model)
    try:
        trainer.run(training, source=source, on_step=interrupter(settings.get("interrupt")), progress=False)
    except trainer.TrainingInterrupted as e:  # the step this rank stopped after
        with open(settings["interrupted"].format(rank=distributed.rank()), "w") as f:
            json.dump({"step": e.step}, f)
        return
    adapters = dict(tree_flatten(training.model.trainable_parameters()))
    mx.save_safetensors(settings["adapters"].format(rank=distributed.rank()), adapters)
    if settings.get("record"):
        with open(settings["record"].format(rank=distributed.rank()), "w") as f:
            json.dump({"rows": source.rows, "keys": source.keys}, f)


def interrupter(at: dict | None):
    """With {"rank": r, "step": s}: rank r sends itself a Ctrl-C once step s is done, that is after
    the step's gather of the ranks' stop requests, the moment only this rank can know of it."""
    if not at or at["rank"] != distributed.rank():
        return None
    return lambda metrics: metrics["step"] == at["step"] and os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
