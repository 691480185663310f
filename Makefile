VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test bench golden

install:
	python3 -m venv $(VENV) && $(BIN)/pip install -e '.[dev]'

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

test:
	$(BIN)/pytest

bench:
	$(BIN)/callstream bench normalize

golden:  ## rewrite golden expectations from the current normalizers; review the diff
	$(BIN)/pytest tests/normalize/test_golden.py --update-golden
