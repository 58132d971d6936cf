# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
# torch==2.13.0 is a CPU wheel on CPU-only machines that keep one on disk, and the regular
# (CUDA) build from PyPI everywhere else. Another build: make TORCH_SPEC="torch==2.5.1" test
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: install demo test lint lab notebooks browser-check gpu-check clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/dpo-teach bandit --out $(OUT)/bandit
	$(BIN)/dpo-teach frontier --preset tiny --out $(OUT)/frontier

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

# DPO_TEACH_CI=1: notebooks 5-7 train at the quick size in CI; their committed outputs are the full size's
test: lint
	DPO_TEACH_CI=1 $(BIN)/pytest

# On a CUDA GPU: the bench at gpt2-large size in bf16, 50 DPO steps of the paper preset, sampling (README)
gpu-check: $(INSTALLED)
	$(BIN)/dpo-teach gpu-check --out $(OUT)/gpu-check

lab: $(INSTALLED)
	$(BIN)/jupyter lab notebooks

# Re-execute the bandit notebooks (1-4 and 4b-4e) in place, as committed (README, "The notebooks").
BANDIT_NOTEBOOKS := $(sort $(wildcard notebooks/0[1-4]*.ipynb))
notebooks: $(INSTALLED)
	$(BIN)/python tools/execute_notebooks.py $(BANDIT_NOTEBOOKS)

# The bandit notebooks in JupyterLab in headless Chromium: run every cell, move every slider (README).
# Playwright cannot download its browsers on a closed network, so it drives Debian's chromium, installed if missing.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-check: $(INSTALLED)
	test -x $(CHROMIUM) || ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	$(BIN)/python tools/browser_check.py --chromium $(CHROMIUM) --out runs/browser-check $(BANDIT_NOTEBOOKS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
