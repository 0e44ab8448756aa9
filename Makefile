# tollway — two commands for a newcomer:
#   make run    set up a local virtualenv and run tollway on its embedded defaults
#   make test   set up the same virtualenv and run lint, types and the test suite

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TEST_WORKERS ?= 2
FUZZ_SCALE ?= 20

.PHONY: run test lint typecheck pytest fuzz bench venv clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tollway needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The CPU build of torch first, so sentence-transformers does not pull a CUDA one.
	$(BIN)/python -m pip install --quiet 'torch==2.13.0'
	@# llama-cpp-python compiles llama.cpp (~4 min on 2 cores); pip caches the wheel.
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Deployed apps run in bubblewrap (docs/provisioning.md#the-sandbox); CI runs as root.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q bubblewrap; } \
		|| echo "warning: bubblewrap (bwrap) is missing: deploys will be refused (apt-get install bubblewrap)"
	@# The console's browser tests drive Debian's chromium through Playwright (docs/console.md).
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium; } \
		|| echo "warning: chromium is missing: the console's browser tests will be skipped (apt-get install chromium)"
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@test -f tollway.toml || $(BIN)/tollway init
	@# Bytecode, as a pip install compiles it: a start then loads instead of compiling (docs/benchmarks.md#start-up).
	@$(BIN)/python -m compileall -q src >/dev/null
	$(BIN)/tollway serve

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)
	@# The layering (docs/architecture.md#who-may-import-whom): contracts in pyproject.toml.
	PYTHONPATH=src $(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	@# Bytecode for the servers the tests start (~0.4 s less each, docs/benchmarks.md#start-up).
	@$(BIN)/python -m compileall -q src >/dev/null
	@# Two workers (pytest-xdist, work stealing): most tests wait on servers,
	@# processes and disks, not on the CPU (TEST_WORKERS=1 runs them in one process).
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

test: lint typecheck pytest

fuzz: $(STAMP)
	@# The schema fuzzing of tests/test_schemathesis.py with FUZZ_SCALE times its examples.
	TOLLWAY_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal tests/test_schemathesis.py

bench: $(STAMP)
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/inference.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache .grimp_cache
