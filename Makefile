VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test bench up golden

install:
	python3 -m venv $(VENV) && $(BIN)/pip install -e '.[dev]'

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

test:
	$(BIN)/pytest

bench:  ## every benchmark, as JSON lines
	for name in normalize normalizer ingress aggregate sink soak; do $(BIN)/callstream bench $$name --json; done

up:
	$(BIN)/callstream up

golden:  ## rewrite golden expectations from the current normalizers; review the diff
	$(BIN)/pytest tests/normalize/test_golden.py --update-golden
