# s2ingest developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= s2ingest-demo
PYTEST_ARGS ?=

.PHONY: install demo test test-all test-fast bench lint clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,postgres]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install s2ingest with test extras

demo: install  ## build a small cube from synthetic products under $(DEMO_DIR)
	$(BIN)/s2ingest demo $(DEMO_DIR)

TEST_JOBS ?= auto

test: install  ## the test suite on every core (PostgreSQL tests skip when no server is reachable)
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadscope $(PYTEST_ARGS)

test-fast: install  ## without the tests marked slow
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadscope -m "not slow" $(PYTEST_ARGS)

bench: install  ## every benchmark (ratios in one run); prints figures, writes bench-results/*.json
	$(BIN)/python -m ingest.benchmarks --out-dir bench-results

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench-results .pytest_cache build *.egg-info
