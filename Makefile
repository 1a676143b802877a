PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint typecheck check clean system-packages

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run.py

# The system programs the tests drive (scripts/system-packages.txt): installed with apt when
# missing and running as root; otherwise this stops at once with the command to run.
system-packages:
	bash scripts/system-packages.sh test

# The gates, in this order: formatting, lint, types, the example policy and its tests; then
# pytest, the whole suite (test) or the fast tier alone, which starts no process (test-fast).
test: system-packages lint typecheck check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: lint typecheck check
	$(BIN)/python -m pytest -m "not realworld" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict gateway ui tests

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
