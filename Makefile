# aigc — run `make help` for the targets. Everything installs into .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
AIGC := $(VENV)/bin/aigc
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install chromium fluidsynth train sample serve test test-all test-fast bench lint format tensorboard clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev,sweep,export,music,serve]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install aigc (editable) with the dev tools, sweep plugins, ONNX export, music and the server

chromium: ## Debian's Chromium for the web page's browser test (needs root; the test skips without it)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { apt-get install -y --no-install-recommends chromium || \
	    { apt-get update && apt-get install -y --no-install-recommends chromium; }; }

fluidsynth: ## FluidSynth and a General MIDI soundfont, for music's WAV previews (needs root; optional)
	@{ command -v fluidsynth >/dev/null && ls /usr/share/sounds/sf2/*.sf2 >/dev/null 2>&1; } || \
	  { apt-get install -y --no-install-recommends fluidsynth timgm6mb-soundfont || \
	    { apt-get update && apt-get install -y --no-install-recommends fluidsynth timgm6mb-soundfont; }; }

train: $(STAMP) ## train the default model (VAE on built-in shapes); ARGS="model=gan ..." to change
	$(AIGC) train $(ARGS)

sample: $(STAMP) ## sample the newest run; ARGS="run=<dir> n=16"
	$(AIGC) sample $(ARGS)

serve: $(STAMP) ## serve the newest run over HTTP (page at http://127.0.0.1:8000/); ARGS="models=[<export>]"
	$(AIGC) serve $(ARGS)

test: $(STAMP) ## the tests CI must pass: all but the `full` ones (README gives the time it took)
	$(PY) -m pytest -q -m "not full" $(ARGS)

test-all: $(STAMP) ## every test: also the whole combination-matrix product and the GPU script's CPU smoke run
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP) ## the tests not marked slow (about 4 min on 2 cores)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP) ## aigc's loop vs a bare PyTorch loop, and aigc serve batching on vs off → bench/results/; ARGS=--quick for a smoke run
	$(PY) bench/bench.py $(ARGS)
	$(PY) bench/serve_bench.py $(filter --quick,$(ARGS))

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

tensorboard: $(STAMP) ## serve TensorBoard over outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## remove runs, caches and build files (keeps .venv)
	find outputs -mindepth 1 -not -name .gitkeep -exec rm -rf {} +
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +
