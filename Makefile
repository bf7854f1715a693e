# The two commands of the README's first screen: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs services venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## demo: migrate the example app on a SQLite file (no server needed), then show status and history
demo: $(STAMP)
	rm -f demo.db demo.db.dbmigrate-lock
	$(BIN)/dbmigrate upgrade --log-format text
	$(BIN)/dbmigrate status
	$(BIN)/dbmigrate history

## lint: ruff and mypy (strict on dbmigrate/)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## docs: build the documentation site in strict mode (a broken link or reference fails)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site  # not --quiet: it hides the warnings that strict counts

## services: install or start what the tests need (PostgreSQL, MariaDB, a Pushgateway binary)
services:
	bash tests/start-services.sh

## test: lint, the docs site, then pytest against real PostgreSQL, MariaDB and SQLite (independent tests in parallel processes)
PYTEST_ARGS ?= -n 3
test: lint docs services
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) site demo.db demo.db.dbmigrate-lock .pytest_cache .mypy_cache .ruff_cache
