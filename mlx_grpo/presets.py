"""Training presets shipped inside model folders.

A model folder may carry `mlx_grpo.yaml`: the settings that are known to work for that model
(the bundled tiny model ships one). `mlx-grpo train --model FOLDER` starts from them; a config
file and command-line flags still win.
"""

from __future__ import annotations

from pathlib import Path

from mlx_grpo.config import read_config_file

PRESET_FILE = "mlx_grpo.yaml"


def preset_for_model(model: str | None) -> dict:
    if not model:
        return {}
    path = Path(model).expanduser() / PRESET_FILE
    if not path.is_file():
        return {}
    preset = read_config_file(path)
    preset["model"] = model
    return preset
