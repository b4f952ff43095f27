# mailflow: `make run` starts everything on the embedded broker; `make test` runs the suite.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run test lint docs bench dashboard services install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mailflow run

# Redis and RabbitMQ are started here when installed but not running, so a
# test run never depends on what an earlier session left behind.
services:
	@bash tests/services.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The suite mostly waits (on workers, MX servers, countdowns): its files run in
# TEST_PROCS parallel processes, a file's tests together in one (harness/brokers.py
# gives each process a broker database / virtual host of its own).
TEST_PROCS ?= 4

test: $(STAMP) services lint
	$(PY) -m pytest -n $(TEST_PROCS) --dist loadfile

# docs/reference/: written from the code's registries (a test fails when they are stale)
docs: $(STAMP)
	$(PY) -m mailflow.reference docs/reference

# Postfix's smtp-source/smtp-sink are installed when possible (never starting Postfix).
bench: $(STAMP) services
	@bash bench/postfix-tools.sh
	$(PY) -m bench $(BENCH_ARGS)

# docs/dashboard.png: deploy/grafana/mailflow.json drawn from a four-minute mixed run
dashboard: $(STAMP) services
	$(PY) -m bench.dashboard

clean:
	rm -rf $(VENV) .mailflow build *.egg-info .pytest_cache .mypy_cache .ruff_cache
