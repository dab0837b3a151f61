# license-keeper developer entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: dev test test-unit lint demo controlplane clean soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## dev: virtualenv in .venv with the package (editable) and the test tools
dev: $(STAMP)

## controlplane: build kube-apiserver, kubectl, etcd, helm and promtool into the cache (first run: many minutes)
controlplane:
	tools/controlplane/build.sh

## test: every test, including those against the real control plane (builds it first if needed)
test: dev controlplane
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

## test-unit: only the tests that need no control plane
test-unit: dev
	$(PY) -m pytest -q -m 'not controlplane' $(PYTEST_ARGS)

## soak: the seeded fault soak; SEED=n STEPS=n replays one schedule (default: the CI seeds, 50 steps each)
soak: dev controlplane
	SOAK_SEEDS=$(SEED) SOAK_STEPS=$(STEPS) $(PY) -m pytest -q -s -m soak tests/soak $(PYTEST_ARGS)

## lint: ruff and mypy
lint: dev
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy src

## demo: the whole job end to end on a local control plane, with the Konnect stand-in
demo: dev controlplane
	$(PY) -m license_keeper.testing.demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
