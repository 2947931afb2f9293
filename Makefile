# Two commands do all the set-up on a fresh machine:
#   make demo   the local two-region lab drill (region-a dies under traffic, automatic failover)
#   make test   the whole test suite against real PostgreSQL and moto
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PG_BIN := /usr/lib/postgresql/15/bin
DEMO_STATE := $(CURDIR)/.drorch-demo

.PHONY: demo test lint bench clean postgres checkov

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

# checkov pins old boto3 and packaging (which break the project's own tools) and ships
# a module named hcl2: it lives in a virtual environment of its own. Offline as
# measured in ../shared/FINDINGS.md (no download of policies, no mapping call).
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_PIN   := checkov==3.3.30

# uv (from the project's venv) installs it in seconds where pip took ~50 s, inside the
# test run that first needs it.
$(CHECKOV_STAMP): $(STAMP)
	$(PYTHON) -m venv --without-pip $(CHECKOV_VENV)
	$(BIN)/uv pip install --quiet --python $(CHECKOV_VENV)/bin/python "$(CHECKOV_PIN)"
	touch $(CHECKOV_STAMP)

checkov: $(CHECKOV_STAMP)
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov -d terraform/ --framework terraform \
	  --skip-download --quiet --compact

lint: $(STAMP)
	$(BIN)/ruff check drorch tests bench

bench: $(STAMP) postgres
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .drorch .drorch-demo
