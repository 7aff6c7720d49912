# Task runner. The two commands of the README:
#   make demo   - deploy to a local container standing in for the server, send a campaign
#   make test   - lint, unit tests and every Molecule scenario (what CI runs: .ci/run)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Scenarios `make molecule` runs, MOLECULE_JOBS at a time (each in containers of its own;
# tests/harness/run-scenarios.sh), longest first: in this order (CI's measured durations) until
# the harness has measured them on this machine (.cache/molecule-logs/durations).
SCENARIOS ?= cluster celery rq switch celery_rabbitmq batch dev_macos production
# Five on a 2-core machine: the five longest (13-20 min each in a local clean run, mostly waiting
# on timeouts, outages and stalled SMTP) start at once, since any of them waiting for a slot
# would lengthen the run; batch, dev_macos and production (10, 7 and 7 min) take the first
# slots that free up and still end before the longest, so nothing else waits. More slots
# shorten nothing and only add CPU contention to the converges, which is where the cores are busy.
MOLECULE_JOBS ?= 5
# Queue mode of the demo, and the broker in celery mode (redis or rabbitmq).
QUEUE_MODE ?= rq
CELERY_BROKER ?= redis
export PATH := $(abspath $(BIN)):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup images demo demo-destroy lint unit molecule test bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt tests/harness/prepare-host.sh
	tests/harness/prepare-host.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed ## Controller packages (rsync, redis-server) and .venv with the pinned tools

images: ## Start a Docker engine if none answers; build the local systemd images
	tests/harness/prepare-docker.sh

# Starts the engine and builds only the image the demo runs (Debian 12, playbooks/demo.yml),
# not every test image (another: EDUPULSE_IMAGES=trixie EDUPULSE_DEMO_IMAGE=edupulse/debian13-systemd:r3).
demo: setup ## Deploy to the demo container (QUEUE_MODE=rq|batch|celery) and send a campaign
	EDUPULSE_IMAGES="$${EDUPULSE_IMAGES:-bookworm}" tests/harness/prepare-docker.sh
	$(BIN)/ansible-playbook playbooks/demo.yml -e queue_mode=$(QUEUE_MODE) -e celery_broker=$(CELERY_BROKER)

demo-destroy: ## Remove the demo container
	docker rm -f edupulse-demo

lint: setup ## yamllint, ansible-lint (production profile), role README tables, example inventories
	$(BIN)/yamllint --strict .
	$(BIN)/python tests/harness/role_docs.py --check
	$(BIN)/ansible-lint
	tests/harness/check-inventories.sh

unit: setup ## Unit tests of app_patches/, the example app and the SMTP sink
	$(BIN)/pytest
	# The celery tests, against the example app patched and configured for celery mode.
	EDUPULSE_TEST_QUEUE_MODE=celery $(BIN)/pytest

molecule: setup images ## Every Molecule scenario in SCENARIOS, MOLECULE_JOBS at a time
	tests/harness/run-scenarios.sh $(MOLECULE_JOBS) $(SCENARIOS)

test: lint unit molecule ## Everything CI runs

bench: setup images ## Benchmarks of the queue modes on containers bench-<mode> (bench/run.py, BENCH_ARGS=...)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean: ## Remove the virtualenv and caches of this checkout
	rm -rf $(VENV) .cache
