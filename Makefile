# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

# Trains the example, builds every target here and signs each bundle before it is published,
# with a demo key made once in dist/example/ (demo-signing.key, .pub for the hospital steps).
demo: $(STAMP)
	$(BIN)/packager demo

# On CI (CI=true) a failed browser install fails here; elsewhere the HTML test skips with why.
test: $(STAMP)
	sh scripts/install-browser.sh || test "$$CI" != true
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	sh scripts/typecheck.sh $(BIN)/python
	$(BIN)/python -m pytest -q -rsx -n 2 --dist loadscope

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/openvino_vs_reference.py

clean:
	rm -rf dist .pytest_cache .ruff_cache
