# The two entry points of the README; each sets up .venv itself on first use.
VENV ?= .venv
ARGS ?=

.PHONY: setup run test lint

setup:
	@GFT_VENV=$(VENV) bash scripts/setup.sh

run: setup
	$(VENV)/bin/gft run $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check pipeline workers tests bench
