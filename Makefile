# uqserve: every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## a .venv with the project and its dev tools

train: $(STAMP) ## train on digits and export to the model store (ARGS="--epochs 5 ...")
	$(BIN)/uqserve train $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) ## lint, then the whole test suite
	$(MAKE) lint
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
