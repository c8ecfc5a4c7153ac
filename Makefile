# Two entry points for a fresh clone; each builds .venv itself on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint format bench clean-venv

OPENBLAS := /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0

$(VENV)/.installed: pyproject.toml
	@# Linux CPU: MLX's wheel has a slow reference BLAS; Debian's OpenBLAS is ~35x faster (best effort,
	@# only as root with apt; mlx-grpo preloads it itself when present, see README).
	@if [ "$$(uname -s)" = Linux ] && [ ! -e $(OPENBLAS) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing libopenblas0-pthread (faster fp32 matmul for MLX on CPU)"; \
		(apt-get update -qq && apt-get install -y -qq libopenblas0-pthread) >/dev/null 2>&1 || echo "  (skipped: apt failed)"; \
	fi
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m mlx_grpo demo

test: $(VENV)/.installed
	@# The test process itself gets OpenBLAS when present (the CLI re-executes itself with it).
	LD_PRELOAD="$$( [ -e $(OPENBLAS) ] && echo $(OPENBLAS) )" $(PY) -m pytest

test-fast: $(VENV)/.installed
	LD_PRELOAD="$$( [ -e $(OPENBLAS) ] && echo $(OPENBLAS) )" $(PY) -m pytest -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.installed
	$(PY) scripts/bench.py

clean-venv:
	rm -rf $(VENV)
