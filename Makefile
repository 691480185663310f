VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# The lock: every dependency pinned with hashes, for Python 3.11 to 3.13 on every platform
# (requirements/*.txt, generated from pyproject.toml by `make lock`; never edited by hand).
COMPILE := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes

.PHONY: install lock test-latest test-lowest docs lint test bench up golden

install:  ## exactly the locked versions, as the README's Quick start does
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install --require-hashes -r requirements/dev.txt \
	  && $(BIN)/pip install --no-deps --no-build-isolation -e .

lock:  ## re-resolve the lock from pyproject.toml's ranges (newest versions); review the diff
	$(COMPILE) --upgrade pyproject.toml -o requirements/main.txt
	$(COMPILE) --upgrade pyproject.toml requirements/build.in --extra dev -o requirements/dev.txt

test-latest:  ## the tests on the newest versions the ranges allow, in a scratch venv
	rm -rf .venv-latest && $(BIN)/uv venv --quiet --python $(PYTHON) .venv-latest
	VIRTUAL_ENV=.venv-latest $(BIN)/uv pip install --quiet --upgrade -e '.[dev]'
	.venv-latest/bin/pytest

test-lowest:  ## the tests on the lowest versions pyproject.toml allows, in a scratch venv
	rm -rf .venv-lowest && $(BIN)/uv venv --quiet --python $(PYTHON) .venv-lowest
	VIRTUAL_ENV=.venv-lowest $(BIN)/uv pip install --quiet --resolution lowest-direct -e '.[dev]'
	.venv-lowest/bin/pytest

docs:  ## generated documents: docs/asyncapi.json
	$(BIN)/callstream asyncapi > docs/asyncapi.json

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

test:
	$(BIN)/pytest

bench:  ## every benchmark, one after the other: its figures, then each target and whether it is met
	for name in normalize normalizer ingress aggregate sink soak; do \
	  echo "== callstream bench $$name"; $(BIN)/callstream bench $$name || exit 1; done

up:
	$(BIN)/callstream up

golden:  ## rewrite golden expectations from the current normalizers; review the diff
	$(BIN)/pytest tests/normalize/test_golden.py --update-golden
