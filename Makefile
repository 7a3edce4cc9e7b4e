# s2ingest developer entry points. `make demo` and `make test` work on a fresh clone.
# The newest CPython by default (3.13); 3.11 stays supported: `make test-py311`, and the lowest
# declared versions: `make test-lowest` (README "Install").
PYTHON ?= python3.13
PYTHON_OLDEST ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= s2ingest-demo
PYTEST_ARGS ?=
# pyenv machines: a python3.X shim runs only the versions pyenv is told to use; tell it every
# installed CPython 3, newest first (an explicit PYENV_VERSION wins)
PYENV_ALL := $(shell command -v pyenv >/dev/null 2>&1 && pyenv versions --bare 2>/dev/null | grep -E '^3\.[0-9]+\.[0-9]+$$' | sort -t. -k2,2nr -k3,3nr | paste -sd: -)
ifneq ($(PYENV_ALL),)
export PYENV_VERSION ?= $(PYENV_ALL)
endif
# DESIGN CHOICE: uv (from PyPI, inside the venv) resolves and installs the stack in seconds
# where pip's resolver can backtrack for many minutes over the test extras; it also gives the
# lowest-versions environment (--resolution lowest-direct), which pip cannot.
# --compile-bytecode: the installed libraries' .pyc are written at install time, as pip does
# (uv does not by default): without them every command compiles numpy, sqlalchemy, ... again
# where bytecode is not written at run time (PYTHONDONTWRITEBYTECODE, read-only venvs):
# `s2ingest status` took 3.1 s instead of 0.7 s. The project's own sources: `compileall`.
UV = $(1)/bin/python -m uv pip install --quiet --compile-bytecode --python $(1)/bin/python
COMPILE = $(1)/bin/python -m compileall -q ingest catalog
# The fast subset: run on every supported Python and on the lowest declared versions
SUBSET ?= tests/test_layout.py tests/test_cli_startup.py tests/test_dependencies.py tests/test_catalog_db.py \
	tests/test_store.py tests/test_stac.py tests/test_cli_options.py
SUBSET_ARGS ?= -m "not slow and not postgres" -p no:cacheprovider

.PHONY: install demo test test-all test-fast test-subset test-py311 test-lowest bench lint clean

# $(call venv,DIR,PYTHON): a venv with pip and uv
define venv
	@command -v $(2) >/dev/null 2>&1 && $(2) -c pass 2>/dev/null || { echo "needs $(2) (set PYTHON=...)"; exit 1; }
	$(2) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip uv
endef

$(BIN)/python:
	$(call venv,$(VENV),$(PYTHON))

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(call UV,$(VENV)) -e ".[test,postgres]"
	$(call COMPILE,$(VENV))
	touch $@

install: $(VENV)/.installed  ## create .venv and install s2ingest with test extras

demo: install  ## build a small cube from synthetic products under $(DEMO_DIR)
	$(BIN)/s2ingest demo $(DEMO_DIR)

TEST_JOBS ?= auto

test: install  ## the test suite on every core (PostgreSQL tests skip when no server is reachable)
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadscope $(PYTEST_ARGS)

test-fast: install  ## without the tests marked slow
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadscope -m "not slow" $(PYTEST_ARGS)

test-subset: install  ## the fast subset (SUBSET) on the default interpreter
	$(BIN)/python -m pytest -n $(TEST_JOBS) $(SUBSET_ARGS) $(SUBSET) $(PYTEST_ARGS)

test-py311:  ## Python 3.11 (the oldest supported): install, the demo, the fast subset, in .venv-py311
	rm -rf .venv-py311 .demo-py311
	$(call venv,.venv-py311,$(PYTHON_OLDEST))
	$(call UV,.venv-py311) -e ".[test,postgres]"
	.venv-py311/bin/s2ingest demo .demo-py311
	.venv-py311/bin/python -m pytest -n $(TEST_JOBS) $(SUBSET_ARGS) $(SUBSET) $(PYTEST_ARGS)
	rm -rf .demo-py311

lowest-constraints.txt: pyproject.toml  ## every declared floor as ==, for tools without a lowest resolution
	$(PYTHON_OLDEST) -c 'import re, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	reqs = p["dependencies"] + [r for e in ("test", "postgres") for r in p["optional-dependencies"][e]]; \
	print("\n".join(sorted({re.sub(r"\[.*\]", "", m.group(1)) + "==" + m.group(2) for r in reqs \
	if (m := re.match(r"([A-Za-z0-9_.\[\]-]+)\s*(?:==|>=)\s*([^,;\s]+)", r))})))' > $@

test-lowest:  ## the lowest declared versions (uv --resolution lowest-direct) on Python 3.11: the fast subset
	rm -rf .venv-lowest
	$(call venv,.venv-lowest,$(PYTHON_OLDEST))
	$(call UV,.venv-lowest) --resolution lowest-direct -e ".[test,postgres]"
	.venv-lowest/bin/python -m pip list --format=freeze > .venv-lowest/versions.txt
	.venv-lowest/bin/python -m pytest -n $(TEST_JOBS) $(SUBSET_ARGS) $(SUBSET) $(PYTEST_ARGS)

bench: install  ## every benchmark (ratios in one run); prints figures, writes bench-results/*.json
	$(call UV,$(VENV)) -e ".[test,postgres,bench]"
	$(BIN)/python -m ingest.benchmarks --out-dir bench-results

clean:
	rm -rf $(VENV) .venv-py311 .venv-lowest $(DEMO_DIR) bench-results .pytest_cache build *.egg-info
