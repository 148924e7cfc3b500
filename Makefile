# The two commands: `make serve` and `make test`. Both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= cpu,test
CONFIG ?= serve_config.yaml
comma := ,

.PHONY: setup serve test test-fast lint plan docs bench bench-routing redis clean-venv

setup: $(STAMP)

# Install the project with the given extras, then fix what pip's resolution gets wrong
# (pyproject.toml [tool.ray-vllm-worker]): every install of the cpu extra must do both.
define install
	$(PY) -m pip install --quiet -e ".[$(1)]"
	@$(PY) -c 'import tomllib; c = tomllib.load(open("pyproject.toml", "rb"))["tool"]["ray-vllm-worker"]; print(" ".join(c["uninstall-after-cpu-install"]))' \
		| xargs $(PY) -m pip uninstall --quiet --yes 2>/dev/null || true
	@$(PY) -c 'import tomllib; c = tomllib.load(open("pyproject.toml", "rb"))["tool"]["ray-vllm-worker"]; print(" ".join(c["install-without-deps"]))' \
		| xargs $(PY) -m pip install --quiet --no-deps
endef

# Re-runs only when the pins (pyproject.toml) or this recipe change.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(call install,$(EXTRAS))
	@touch $@
	@echo "setup complete: $(VENV)"

serve: setup
	$(PY) -m serve_app serve $(CONFIG)

# Both tiers: the fast one (tests/<layer>/: no Ray, no engine) first, then the end-to-end one
# (tests/e2e/: the real app on Ray and the real engine on CPU, real clients).
test: setup lint redis
	$(PY) -m pytest

# The fast tier alone, in about a minute.
test-fast: setup redis
	$(PY) -m pytest -m "not e2e"

# A real Redis server for the job store's tests: one on PATH, or Debian's package unpacked
# into .cache/redis (no root needed).
redis:
	@cluster/redis.sh install >/dev/null

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/shellcheck -x cluster/*.sh .ci/run
	$(VENV)/bin/hadolint Dockerfile

# Side-by-side benchmark against vLLM's own server (about two hours on 2 cores: 3 alternated
# starts of each server, with the servers in the client's session and in one of their own);
# see docs/benchmarks/. BENCH_ARGS go to bench/run.py, e.g. BENCH_ARGS="--placements same".
# BENCH_ARGS="--peer rayllm rayllm-direct --rounds 2" adds Ray Serve LLM's columns.
bench: setup
	$(call install,$(EXTRAS)$(comma)bench)
	$(PY) bench/run.py $(BENCH_ARGS)

# Routing across two replicas of the default model: HAProxy's leastconn, Serve's power of two
# choices and ROUTING_POLICY=prefix on a shared-prefix and a random workload (bench/routing.py;
# about an hour). BENCH_ARGS="--peer" adds Ray Serve LLM with its PrefixCacheAffinityRouter
# (about an hour and a half in all).
bench-routing: setup
	$(call install,$(EXTRAS)$(comma)bench)
	$(PY) bench/routing.py $(BENCH_ARGS)

plan: setup
	$(PY) -m serve_app plan $(CONFIG)

docs: setup
	$(PY) -m serve_app docs --write
	$(PY) -m serve_app runpod-config --write

clean-venv:
	rm -rf $(VENV)
