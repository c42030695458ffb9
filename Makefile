# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench mutate clean

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
# zizmor audits the release workflow offline: any finding fails. pytest-randomly shuffles the
# test order with a seed printed first; `make test SEED=N` replays that order.
test: $(STAMP)
	sh scripts/install-browser.sh || test "$$CI" != true
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/zizmor --offline .github/workflows/
	$(BIN)/lint-imports
	sh scripts/typecheck.sh $(BIN)/python
	seed="$(SEED)"; test -n "$$seed" || seed=$$($(BIN)/python -c 'import random; print(random.randrange(10**9))'); \
	echo "pytest-randomly seed $$seed (same order again: make test SEED=$$seed)"; \
	$(BIN)/python -m pytest -q -rsx -n 2 --dist loadscope -p randomly --randomly-seed=$$seed --durations=15

# Mutation testing of the trust core (mutmut 3, [tool.mutmut] in pyproject.toml; scores and
# survivors in docs/mutation.md). `make mutate MUTANTS='packager.core.metrics.*'` runs a subset.
mutate: $(STAMP)
	PACKAGER_TEST_DATA="$${PACKAGER_TEST_DATA:-$(CURDIR)/../shared/data/pneumoniamnist.npz}" \
	  nice -n 10 $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/mutmut results
	$(BIN)/python scripts/mutation_scores.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/openvino_vs_reference.py

clean:
	rm -rf dist .pytest_cache .ruff_cache mutants
