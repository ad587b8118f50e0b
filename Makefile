# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_DATABASE_URL ?= postgresql+psycopg2://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
export TEST_DATABASE_URL TEST_REDIS_URL

.PHONY: run test test-fast install demo migrate bench lint lock clean help fault provision

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# The versions the tests passed with: requirements.lock (pip-compile of setup.cfg's runtime, test and
# dev dependencies), then pushq itself without resolving anything again.
$(STAMP): setup.cfg pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

provision:  ## What `make test` provisions: services started if down, missing Debian packages installed (scripts/provision)
	scripts/provision

install: $(STAMP)  ## Create .venv and install pushq with its test and dev tools, at the locked versions

lock: $(STAMP)  ## Re-resolve requirements.lock after a change to setup.cfg's dependencies
	$(BIN)/pip-compile --quiet --extra test --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		-o requirements.lock setup.cfg

lint: $(STAMP)  ## ruff (a broad rule set, pyproject.toml) and mypy (strict on shared/ and workers/)
	$(BIN)/ruff check .
	$(BIN)/mypy

run: $(STAMP)  ## Start API + worker + scheduler (embedded Redis and SQLite unless configured)
	$(BIN)/pushq run

# scripts/provision first: starts PostgreSQL/Redis/RabbitMQ if they are down, creates the test database,
# apt-installs chromium, rabbitmq-server and pgbouncer if missing (silent when all is there).
test: $(STAMP)  ## The whole suite (unit, integration, e2e, fault); provisions the services and packages it needs first
	scripts/provision
	$(BIN)/pytest

test-fast: $(STAMP)  ## The unit tier only: no PostgreSQL, Redis or workers, in seconds
	$(BIN)/pytest -m unit -q

fault: $(STAMP)  ## Only the fault suite (worker kills, broker/database restarts, bad vendors; part of `make test`)
	scripts/provision
	$(BIN)/pytest -m fault

demo: $(STAMP)  ## With `make run` running: send one notification end to end and print it decrypted
	$(BIN)/python -m standins.demo

migrate: $(STAMP)  ## Apply migrations to DATABASE_URL
	$(BIN)/pushq migrate

BENCH ?= pipeline
bench: $(STAMP)  ## Benchmarks: the pipeline end to end (ARGS=--quick: < 2 min); BENCH=standins or BENCH=webpush-cpu for the others
	$(BIN)/python -m bench $(BENCH) $(ARGS)

clean:  ## Remove the virtualenv and local state
	rm -rf $(VENV) var pushq.sqlite3* *.egg-info
