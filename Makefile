# The two commands the README leads with: `make demo` (main job) and `make test` (test suite).
# Both run scripts/setup.sh first, which is idempotent (a stamp file skips it when nothing changed).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench

setup:
	FVTOOL_VENV=$(VENV) ./scripts/setup.sh

demo: setup
	$(VENV)/bin/fvtool demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
