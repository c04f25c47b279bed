# The two commands README.md opens with:
#   make run   - set up, poll the demo sources once, serve on http://127.0.0.1:8080/
#   make test  - set up (system packages, npm, venv) and run the whole test suite, on SQLite
#                and on PostgreSQL
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.PHONY: run test test-sqlite test-postgresql setup test-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(TSTAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TSTAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/icsfeed poll --once || true
	$(BIN)/icsfeed accounts
	$(BIN)/icsfeed serve

test-deps:
	bash scripts/install-test-deps.sh

# the whole suite twice: on SQLite, then on a private PostgreSQL cluster (tests/postgres.py);
# both passes always run, and a failure in either fails the target
test: $(TSTAMP) test-deps
	$(BIN)/ruff check icsfeed tests benchmarks
	@status=0; \
	echo "== pytest on SQLite"; $(BIN)/python -m pytest -q || status=1; \
	echo "== pytest on PostgreSQL"; ICSFEED_TEST_BACKEND=postgresql $(BIN)/python -m pytest -q || status=1; \
	exit $$status

test-sqlite: $(TSTAMP) test-deps
	$(BIN)/python -m pytest -q

test-postgresql: $(TSTAMP) test-deps
	ICSFEED_TEST_BACKEND=postgresql $(BIN)/python -m pytest -q

bench: $(TSTAMP) test-deps
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) data test-artifacts .pytest_cache
