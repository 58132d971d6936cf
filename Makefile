# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
# torch==2.13.0 is a CPU wheel on CPU-only machines that keep one on disk, and the regular
# (CUDA) build from PyPI everywhere else. Another build: make TORCH_SPEC="torch==2.5.1" test
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: install demo test lint lab gpu-check clean

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

test: lint
	$(BIN)/pytest

# On a CUDA GPU: the bench at gpt2-large size in bf16, 50 DPO steps of the paper preset, sampling (README)
gpu-check: $(INSTALLED)
	$(BIN)/dpo-teach gpu-check --out $(OUT)/gpu-check

lab: $(INSTALLED)
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
