# Two commands: `make run` starts the server, `make test` checks everything.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-pyproject

# make run CONFIG=sipswitch.toml DATA=data
CONFIG ?=
DATA   ?= data
SERVE_CONFIG := $(if $(CONFIG),--config $(CONFIG),$(if $(wildcard sipswitch.toml),--config sipswitch.toml))

.PHONY: venv run test test-deps lint typecheck pytest bench clean

venv: $(STAMP)

# Reinstalls only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: venv
	$(BIN)/sipswitch serve $(SERVE_CONFIG) --data $(DATA)

test-deps:
	bash scripts/install-test-deps.sh

lint: venv
	$(BIN)/ruff check src tests

typecheck: venv
	$(BIN)/mypy

# pytest exits 5 when it collected nothing; that is not a failure of the code.
pytest: venv
	$(BIN)/pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

test: test-deps venv
	$(MAKE) lint
	$(MAKE) typecheck
	$(MAKE) pytest

bench: test-deps venv
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build bench-results .pytest_cache .mypy_cache .ruff_cache
