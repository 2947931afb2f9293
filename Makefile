# Two commands do all the set-up on a fresh machine:
#   make demo   the local two-region lab drill (region-a dies under traffic, automatic failover)
#   make test   the whole test suite against real PostgreSQL and moto
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PG_BIN := /usr/lib/postgresql/15/bin
DEMO_STATE := $(CURDIR)/.drorch-demo

.PHONY: demo test lint bench clean postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,lab]"
	touch $(STAMP)

# PostgreSQL 15 server binaries (Debian packages) when the machine lacks them.
postgres:
	@if [ ! -x $(PG_BIN)/postgres ]; then \
	  echo "installing PostgreSQL 15 (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    postgresql-15 postgresql-contrib >/dev/null; \
	fi

demo: $(STAMP) postgres
	@rm -rf $(DEMO_STATE)
	DRORCH_STATE_DIR=$(DEMO_STATE) $(BIN)/drorch --log-level warning lab drill --runbook runbooks/lab.yaml
	DRORCH_STATE_DIR=$(DEMO_STATE) $(BIN)/drorch audit verify --runbook runbooks/lab.yaml

test: $(STAMP) postgres
	$(BIN)/ruff check drorch tests bench
	$(BIN)/pytest -q -rs --durations=15 -n logical --maxprocesses 12 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check drorch tests bench

bench: $(STAMP) postgres
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .drorch .drorch-demo
