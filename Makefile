# The two entry points of the README; each sets up what it needs on first use.
VENV ?= .venv
ARGS ?=

.PHONY: setup vllm run test test-fast test-scale lint

setup:
	@GFT_VENV=$(VENV) bash scripts/setup.sh

# the vLLM rollout's own environment, .venv-vllm (rollout.backend=vllm; the tests use it)
vllm: setup
	@GFT_VENV=$(VENV) bash scripts/setup_vllm.sh

run: setup
	$(VENV)/bin/gft run $(ARGS)

test: setup vllm
	$(VENV)/bin/python -m pytest -q --durations=20 $(ARGS)

# the unit tests only: no Ray cluster, no run, no vLLM; the edit loop's check
test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow" --durations=10 $(ARGS)

# a real model's size: recipes/qwen2.5-0.5b-shape.yaml end to end (about 20 GiB, minutes)
test-scale: setup vllm
	$(VENV)/bin/python -m pytest -q -m scale --durations=5 $(ARGS)

lint: setup
	$(VENV)/bin/ruff check pipeline workers tests bench
