# pixpress: thin entry points; the logic lives in scripts/ (see scripts/stack.sh for the knobs).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
MAKEFLAGS += --no-print-directory
.DEFAULT_GOAL := help

VENV  := .venv
PY    := $(VENV)/bin/python
STACK := scripts/stack.sh

PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=
BENCH_MODULE ?= bench.throughput

# The settings the test suite expects from the running services (short retry delays, a webhook secret,
# local image hosts allowed). Exported to both `scripts/stack.sh up` (which restarts the services when their
# PIXPRESS_* environment changed) and pytest. Override any of them on the command line.
test: export PIXPRESS_ALLOW_PRIVATE_URLS ?= true
test: export PIXPRESS_WEBHOOK_SECRET ?= whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
test: export PIXPRESS_RETRY_BASE_DELAY_MS ?= 200
test: export PIXPRESS_WEBHOOK_RETRY_DELAYS_MS ?= [300,600,1200]
test: export PIXPRESS_SWEEP_INTERVAL ?= 2
test: export PIXPRESS_STUCK_AFTER ?= 30
# retention on, so tests/test_retention.py sees the aggregator delete a request it backdated past it
test: export PIXPRESS_RETENTION_DAYS ?= 30
# a hanging image host fails in seconds, and its retry chain ends well inside STUCK_AFTER
test: export PIXPRESS_READ_TIMEOUT ?= 3
test: export PIXPRESS_DOWNLOAD_TIMEOUT ?= 5
# a slow-body upload is cut off in 10 s, not the default 5 min (tests send their bodies in well under a second)
test: export PIXPRESS_API_BODY_TIMEOUT ?= 10
# smaller input limits so the limit tests send megabytes, not the 50 MiB / 1,000,000-row defaults
test: export PIXPRESS_MAX_ROWS ?= 50000
test: export PIXPRESS_MAX_CSV_BYTES ?= 16777216
# The demo and the benchmark serve their images from 127.0.0.1.
demo bench: export PIXPRESS_ALLOW_PRIVATE_URLS ?= true

.PHONY: help install up down ps status logs restart test test-fast lint lock docs demo bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 10

install: ## install what is missing: venv, rabbitmq-server, FerretDB and MinIO binaries
	@scripts/install.sh

up: ## start the whole stack on 127.0.0.1 and wait until it is healthy
	@$(STACK) up

down: ## stop the stack gracefully
	@$(STACK) down

ps: ## one line "<name> <pid>" per running process
	@$(STACK) ps

status: ## supervisor states and health probes
	@$(STACK) status

logs: ## follow the program logs
	@$(STACK) logs

restart: ## restart the Python services (after a code change) and wait until healthy
	@$(STACK) restart

test: ## the whole suite against the running stack (started here with the test settings)
	@$(STACK) up
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-fast: ## only the tests that need no server (pytest -m pure): seconds, nothing started
	$(VENV)/bin/pytest -q -m pure $(PYTEST_ARGS)

lint: ## ruff, mypy (configured in pyproject.toml), plus shellcheck when it is installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	@if command -v shellcheck >/dev/null; then shellcheck -x scripts/*.sh .ci/run; else echo "shellcheck not installed, skipped"; fi

lock: ## after a dependency change in pyproject.toml: pin every version again in constraints.txt (needs PyPI)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--custom-compile-command "make lock" -o constraints.txt

docs: ## regenerate docs/configuration.md from shared/settings.py
	$(PY) -m scripts.gen_config_docs

demo: ## start the stack and put the bundled sample CSV through the pixpress command line
	@$(STACK) up
	$(PY) -m scripts.demo $(DEMO_ARGS)

bench: ## start the stack and run the benchmark
	@$(STACK) up
	$(PY) -m $(BENCH_MODULE) $(BENCH_ARGS)

clean: ## stop the stack and delete its state (.run: queues, database, objects, logs)
	@$(STACK) clean
