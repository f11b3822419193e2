# Two commands do all set-up on a fresh machine with Python 3.11:
#   make book   environment, every notebook (Papermill, PROFILE), the rendered book
#   make test   environment, the test suite (includes an end-to-end smoke run of the book)
PROFILE ?= quick
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The environment is rebuilt when the dependency list changes (stamp keyed on pyproject.toml).
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: book run test lint benchmarks clean env

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP)
	$(BIN)/glacier-mapping run --profile $(PROFILE)

book: run
	$(BIN)/glacier-mapping build-book --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check lib tests benchmarks notebooks

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf _build outputs
