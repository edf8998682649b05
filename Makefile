# Every target is a thin wrapper over the real tool. `make run` and `make test` set up everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# pyenv's shim for a non-default version can hang, so prefer the interpreter itself.
PYTHON313 ?= $(shell ls -d $$HOME/.pyenv/versions/3.13*/bin/python3.13 2>/dev/null | tail -n 1 | grep . || command -v python3.13)
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export SAM_CLI_TELEMETRY := 0
# sam build for python3.13 needs a python3.13 executable first on PATH.
export PATH := $(dir $(PYTHON313)):$(PATH)
export PYTHONPATH := $(CURDIR):$(CURDIR)/layers/shared

.PHONY: help setup browser run demo resync test lint format typecheck unit integration faults soak e2e validate security build bench deploy clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.installed: requirements-dev.txt layers/shared/requirements.txt
	@test -n "$(PYTHON313)" || { echo "python3.13 not found: install it (pyenv install 3.13) or set PYTHON313=/path/to/python3.13"; exit 1; }
	$(PYTHON313) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed  ## create the Python 3.13 virtualenv with every tool

# Debian's Chromium and ChromeDriver for the e2e tier's browser test (headless); installed once.
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo )apt-get

browser:  ## install Debian's chromium and chromium-driver if they are missing (the e2e browser test needs them)
	@if [ -x "$(CHROMIUM)" ] && [ -x "$(CHROMEDRIVER)" ]; then exit 0; fi; \
	echo "Installing Debian's chromium and chromium-driver (for the e2e browser test)…"; \
	$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq chromium chromium-driver >/dev/null

run: setup  ## start the whole app locally (DynamoDB Local, Feishu simulator, functions) and show it working
	$(PY) -m local.run

demo: setup  ## the same demo, non-interactive; fails if the mirror does not match
	$(PY) -m local.run --demo

LOCAL_API_PORT ?= 3000
resync:  ## start one user's sync through the local API's status route: make resync USER=ou_...
	@case "$(USER)" in ou_*) ;; *) echo "usage: make resync USER=ou_... (an open_id; the app must be running: make run)"; exit 2;; esac
	@curl -sS --fail-with-body -X POST -H 'Accept: application/json' "http://127.0.0.1:$(LOCAL_API_PORT)/status/$(USER)/resync"; echo

test: setup lint typecheck unit integration faults e2e validate security build  ## everything CI runs

lint: setup  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: setup  ## mypy (strict on the shared package)
	$(BIN)/mypy layers/shared/feishu_mirror functions local tests bench

unit: setup  ## pure logic, no I/O
	$(BIN)/pytest tests/unit -q

integration: setup  ## real DynamoDB Local and the Feishu simulator over HTTP
	$(BIN)/pytest tests/integration -q

faults: setup  ## a few hundred seeded fault schedules (FAULT_SCHEDULES=200)
	$(BIN)/pytest tests/faults -q

# FUZZ_EXAMPLES_SCALE multiplies every fuzz and property test's example count (make test runs them at 1).
soak: setup  ## thousands of fault schedules and 10x the callback fuzz and data round-trip examples, then the README's figures are rewritten from them
	FAULT_SCHEDULES=$${FAULT_SCHEDULES:-3000} $(BIN)/pytest tests/faults -q -x
	FUZZ_EXAMPLES_SCALE=$${FUZZ_EXAMPLES_SCALE:-10} $(BIN)/pytest tests/unit/test_callback_fuzz.py tests/integration/test_callback_handler_fuzz.py tests/integration/test_feishu_data_roundtrip.py -q -x
	$(PY) -m tests.faults.report
	$(PY) -m tests.fuzz_report

e2e: setup browser  ## the template's functions under the Lambda emulator, driven through the local API (and Chromium)
	$(BIN)/pytest tests/e2e -q

validate: setup  ## sam validate --lint
	$(BIN)/sam validate --lint

# checkov's dependency pins conflict with aws-sam-cli's, so it has a virtualenv of its own.
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	@test -n "$(PYTHON313)" || { echo "python3.13 not found: install it (pyenv install 3.13) or set PYTHON313=/path/to/python3.13"; exit 1; }
	$(PYTHON313) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

# Every failed checkov check is fixed in template.yaml or skipped there, on the resource, with the reason
# (Metadata: checkov: skip). BC_SKIP_MAPPING and --skip-download keep checkov offline. checkov does not
# expand Fn::ForEach (it would not see the resources a loop makes), so it scans the template as
# local.template expands it (the skips travel with their resources).
# bandit -ll: medium severity and up; the one yaml.load (a SafeLoader subclass) is marked nosec in place.
# The IAM test checks each role against the AWS calls `make faults e2e` recorded (make test runs those first).
security: setup $(CHECKOV_VENV)/.installed  ## checkov on template.yaml, bandit on the code, IAM equal to the recorded calls
	mkdir -p .local && $(PY) -m local.template > .local/template.expanded.json
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov -f .local/template.expanded.json --framework cloudformation --compact --quiet --skip-download
	$(BIN)/bandit -q -r layers/shared/feishu_mirror functions local -ll
	$(BIN)/pytest tests/security -q

build: setup  ## sam build (no Docker needed)
	$(BIN)/sam build

$(VENV)/.bench-installed: requirements-bench.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $@

bench: setup $(VENV)/.bench-installed  ## benchmarks (not part of make test); figures go to bench/results.json
	POWERTOOLS_LOG_LEVEL=WARNING $(PY) -m bench.run

deploy: build  ## sam deploy --guided against your AWS account
	$(BIN)/sam deploy --guided

clean:  ## remove build output and local state
	rm -rf .aws-sam .local .pytest_cache .mypy_cache .ruff_cache
