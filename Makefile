# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_DATABASE_URL ?= postgresql+psycopg2://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
export TEST_DATABASE_URL TEST_REDIS_URL

.PHONY: run test install demo migrate bench lint clean help fault

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install pushq with its test tools

run: $(STAMP)  ## Start API + worker + scheduler (embedded Redis and SQLite unless configured)
	$(BIN)/pushq run

test: $(STAMP)  ## Migrate a test database and run the whole suite against real PostgreSQL/Redis/Celery
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/alembic upgrade head
	$(BIN)/pytest

fault: $(STAMP)  ## Only the fault suite (worker kills, broker/database restarts, bad vendors; part of `make test`)
	$(BIN)/pytest -m fault

demo: $(STAMP)  ## With `make run` running: send one notification end to end and print it decrypted
	$(BIN)/pushq demo

migrate: $(STAMP)  ## Apply migrations to DATABASE_URL
	$(BIN)/pushq migrate

BENCH ?= pipeline
bench: $(STAMP)  ## Benchmarks: the pipeline end to end (ARGS=--quick: < 2 min); BENCH=standins or BENCH=webpush-cpu for the others
	$(BIN)/python -m bench $(BENCH) $(ARGS)

clean:  ## Remove the virtualenv and local state
	rm -rf $(VENV) var pushq.sqlite3* *.egg-info
