"""The report opened in headless Chromium: it renders (screenshot kept in the test's temp dir) and no
model text runs as script. Debian's `chromium` is installed when missing and possible, else skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import png_size, write_synthetic_run

from mlx_grpo import report

pytestmark = pytest.mark.slow  # a real browser

# --in-process-gpu: on a loaded machine the separate GPU process sometimes fails to launch and
# Chromium gives up ("GPU process isn't usable"); in-process it cannot fail that way.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--in-process-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WINDOW = (1200, 2000)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of a chromium binary, installed with apt-get (as root) when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and apt-get cannot install it here (not root or no apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"could not install chromium with apt-get: {e}")
    return shutil.which("chromium") or pytest.skip("apt-get ran but no chromium binary was found")


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
    # The OpenBLAS preload that speeds up MLX makes Chromium hang: it gets a clean environment.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_report_renders_in_chromium_and_runs_no_model_text(tmp_path, chromium):
    run = write_synthetic_run(tmp_path / "run")
    page = report.build_report(run).resolve()
    shot = tmp_path / "report.png"
    result = run_chromium(
        chromium, tmp_path / "profile", f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", page.as_uri()
    )
    assert shot.is_file(), f"no screenshot; chromium said: {result.stderr[-2000:]}"
    assert png_size(shot) == WINDOW

    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    assert 'id="completions"' in dom
    assert "&lt;script&gt;document.title=" in dom  # the hostile completion is there, as text
    assert "PWNED" not in dom  # ...and it never ran (it would have set the title to PWNED)
