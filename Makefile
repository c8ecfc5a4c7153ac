# Two entry points for a fresh clone; each builds .venv itself on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m mlx_grpo demo

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) scripts/bench.py

clean-venv:
	rm -rf $(VENV)
