# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make demo   - create .venv, install callrt, run examples/hello
#   make test   - create .venv, install callrt with test extras, run the static checks (make check),
#                 install etcd's package if missing, run the suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench,etcd,watch,dns,fuzz,prometheus]'
	touch $@

.PHONY: demo shop check test docs bench bench-full
demo: $(BIN)/.installed
	$(BIN)/python -m examples.hello

shop: $(BIN)/.installed
	$(BIN)/python -m examples.shop

# Static checks, their own step before the tests: lint, format, types (mypy and basedpyright, on what
# pyproject's [tool.mypy] and [tool.basedpyright] name), layers.
check: $(BIN)/.installed
	$(BIN)/ruff check callrt tests bench examples fuzz
	$(BIN)/ruff format --check callrt tests bench examples fuzz
	$(BIN)/mypy
	$(BIN)/basedpyright
	$(BIN)/lint-imports

test: check
	bash scripts/setup-etcd.sh
	$(BIN)/pytest

# The documentation site (mkdocs.yml, docs/), built strictly into build/site: the check tests/test_docs.py runs.
docs: $(BIN)/.installed
	$(BIN)/mkdocs build --strict

bench: $(BIN)/.installed
	$(BIN)/python -m bench --profile quick

bench-full: $(BIN)/.installed
	$(BIN)/python -m bench --profile full
