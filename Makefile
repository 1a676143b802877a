PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: .installed-run when the package and what it needs to run are installed (make run),
# .installed when the dev extras are too (make test). The dev install makes both, so `make run`
# after `make test` installs nothing; `make test` after `make run` adds the dev extras.
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test test-fast lint typecheck check clean system-packages bench-packages

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(RUN_STAMP) $(STAMP)

# The gateway and a local registry wired to it (scripts/run.py). Ports: make run GATEWAY_PORT=N
# REGISTRY_PORT=N. Only docker-registry is installed (as root, with apt) when missing.
GATEWAY_PORT ?= 5001
REGISTRY_PORT ?= 5000
run: $(RUN_STAMP)
	bash scripts/system-packages.sh run
	$(BIN)/python scripts/run.py --gateway-port $(GATEWAY_PORT) --registry-port $(REGISTRY_PORT)

# The system programs the tests drive (scripts/system-packages.txt): installed with apt when
# missing and running as root; otherwise this stops at once with the command to run.
system-packages:
	bash scripts/system-packages.sh test

# The same, and the bench-only ones (wrk) that bench/ uses.
bench-packages:
	bash scripts/system-packages.sh bench

# The gates, in this order: formatting, lint, types, the example policy and its tests; then
# pytest, the whole suite (test) or the fast tier alone, which starts no process (test-fast).
# PYTEST_WORKERS processes (pytest-xdist) share the tests, in make test a test module to one
# process: most end-to-end tests wait on real processes, so two workers fit CI's two cores.
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
# $(call XDIST,MODE): the workers' options, MODE how tests are shared (pytest-xdist's --dist).
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist $(1))
test: system-packages lint typecheck check
	$(BIN)/python -m pytest $(call XDIST,loadfile) --durations=15 $(PYTEST_ARGS)

# The fast tier has no costly module fixtures: its tests are shared one by one (--dist load).
# It also generates fewer examples in its property and fuzz tests than make test.
test-fast: lint typecheck check
	PROPERTY_EXAMPLES=30 FUZZ_EXAMPLES=100 $(BIN)/python -m pytest $(call XDIST,load) -m "not realworld" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict gateway ui tests bench

check: $(STAMP)
	$(BIN)/registry-gateway check policies

# The fuzz targets of tests/fuzz/ with FUZZ_EXAMPLES generated inputs each (pytest runs them
# with a few hundred); the statistics show how many ran and how long each target took.
FUZZ_EXAMPLES ?= 100000
.PHONY: fuzz
fuzz: $(STAMP)
	FUZZ_PROFILE=full FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -p no:cacheprovider \
		--hypothesis-show-statistics tests/fuzz $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .data build *.egg-info
