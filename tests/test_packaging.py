"""The package as users get it: every import declared, and the built wheel installed in a fresh venv
runs the demo from a folder far from the source tree, with the bundled model found as package data."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MODEL_FILES = [
    "README.md",
    "config.json",
    "mlx_grpo.yaml",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement)[0]).lower()


def _imported_modules() -> set[str]:
    """Top-level names of every absolute import in mlx_grpo/, in functions too."""
    names = set()
    for path in (ROOT / "mlx_grpo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"mlx_grpo", "__future__"}


def test_every_imported_distribution_is_a_declared_dependency():
    project = PYPROJECT["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for extra, reqs in project["optional-dependencies"].items() if extra != "dev" for r in reqs}
    providers = metadata.packages_distributions()
    undeclared = {
        module: providers.get(module, [module])
        for module in _imported_modules()
        if not {_name(d) for d in providers.get(module, [module])} & declared
    }
    assert undeclared == {}


def test_package_data_names_only_files_that_exist():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["mlx_grpo"]
    assert patterns and all(list((ROOT / "mlx_grpo").glob(p)) for p in patterns)


def _copy_source(dest: Path) -> Path:
    skip = shutil.ignore_patterns(".venv", ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, dest, ignore=skip, symlinks=True)
    return dest


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_built_wheel_installs_in_a_fresh_venv_and_runs_the_demo_elsewhere(tmp_path):
    source = _copy_source(tmp_path / "source")
    dist = tmp_path / "dist"
    # --no-isolation: the setuptools of this environment (dev extra), so the build needs no network.
    build = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source])
    lines = (build.stdout + build.stderr).splitlines()  # setuptools' deprecations (the licence table) included
    noise = "byte-compiling is disabled"  # PYTHONDONTWRITEBYTECODE, the environment's choice
    assert [line for line in lines if re.search("warn|deprecat", line, re.I) and noise not in line] == []
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")  # the wheel was built from this sdist: it carries the model too
    _run([sys.executable, "-m", "twine", "check", "--strict", wheel, sdist])
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {f"mlx_grpo/weights/countdown-tiny/{f}" for f in MODEL_FILES} <= names
    assert "License-Expression: Apache-2.0" in meta and "Requires-Dist: tqdm" in meta

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel])
    # Dependencies come from this environment, behind the venv's own site-packages (a .pth line adds
    # a path, not its .pth files: this checkout's editable install stays out).
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLX_GRPO_OPENBLAS_REEXEC")}
    where = _run(
        [python, "-c", "import mlx_grpo.demo as d; print(d.__file__); print(d.BUNDLED_MODEL)"], cwd=elsewhere, env=env
    )
    module, model = (Path(line) for line in where.stdout.split())
    assert site in module.parents and site in model.parents
    _run([venv / "bin" / "mlx-grpo", "--help"], cwd=elsewhere, env=env)
    _run([venv / "bin" / "mlx-grpo", "demo", "--quick", "--quiet"], cwd=elsewhere, env=env)
    result = json.loads((elsewhere / "runs" / "demo" / "demo.json").read_text())
    assert Path(result["model"]) == model and result["steps"] == 2
    assert (elsewhere / "runs" / "demo" / "adapters.safetensors").is_file()
