# license-keeper developer entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
UV     := $(VENV)/bin/uv

.PHONY: dev test test-unit lint demo demo-node node controlplane bench clean soak lock lock-upgrade image image-gateway release

# Installs are locked: every package comes from a lock file, exactly as pinned and hash-checked, with
# --no-deps so that pip resolves nothing (a newer upstream release can neither change nor break it), and
# `pip check` proves the set is complete. The venv's own pip is used as it comes with the interpreter.
PIP_LOCKED := --quiet --disable-pip-version-check --no-deps --require-hashes --only-binary :all:

$(STAMP): pyproject.toml requirements-dev.lock build-requirements.lock
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_LOCKED) -r requirements-dev.lock -r build-requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

## dev: virtualenv in .venv from requirements-dev.lock (the package editable, the test tools)
dev: $(STAMP)

## controlplane: build kube-apiserver, kubectl, etcd, helm, promtool, prometheus, alertmanager, the node's
## kubelet, kube-controller-manager, kube-scheduler and kube-proxy, the release tools registry and cosign, and
## the backup tools velero, velero-plugin-for-aws and versitygw into the cache (first run: many minutes)
controlplane:
	tools/controlplane/build.sh

# The image tests (tests/image) need podman; without it they are left out here, and fail when asked for.
IMAGE_TESTS := $(if $(shell command -v podman),,-m 'not image')

## test: every test, including those against the real control plane (builds it first if needed), the
## node tests (pods on a real node: root and the Debian packages .ci/run installs) and, where podman is
## installed, the container image's
test: dev controlplane
	$(PY) -m pytest -q -rs $(IMAGE_TESTS) $(PYTEST_ARGS)

## test-unit: only the tests that need no control plane
test-unit: dev
	$(PY) -m pytest -q -m 'not controlplane and not image and not node' $(PYTEST_ARGS)

## soak: the seeded fault soak; SEED=n STEPS=n replays one schedule (default: the CI seeds, 50 steps each)
soak: dev controlplane
	SOAK_SEEDS=$(SEED) SOAK_STEPS=$(STEPS) $(PY) -m pytest -q -s -m soak tests/soak $(PYTEST_ARGS)

## lint: ruff and mypy
lint: dev
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/mypy src tools/release

## demo: the whole job end to end on a local control plane, with the Konnect stand-in
demo: dev controlplane
	$(PY) -m license_keeper.testing.demo

## demo-node: the seed's scenario on real pods: the chart on a real node, Konnect down, the keeper at zero,
## gateway pods deleted and back licensed, a rotation rolled out (root; the packages .ci/run installs)
demo-node: dev controlplane
	$(PY) -m license_keeper.testing.demo_node

## node: a real node beside the control plane, in the foreground until Ctrl-C (WORKDIR=/tmp/lk-node)
node: dev controlplane
	$(PY) -m license_keeper.testing.node start --workdir $(or $(WORKDIR),/tmp/lk-node)

## bench: the keeper's figures in one table (start to ready, failover, API calls per poll, memory; ~15 min),
## measured on the keeper installed as the image installs it (bench/runtime.sh); then the same on real pods
## (bench/node.py, ~2 min: gateway pods restarted licensed during an outage, rotation rolled out, node restart),
## then admin-svc with 300 gateway pods (bench/discovery.py, ~30 s: round time, loop stall, RSS, requests per pod)
bench: dev controlplane
	py="$$(UV=$(UV) bench/runtime.sh)" && $(PY) bench/keeper.py --python "$$py" $(BENCH_ARGS)
	$(PY) bench/node.py $(BENCH_NODE_ARGS)
	$(PY) bench/discovery.py $(BENCH_DISCOVERY_ARGS)

## lock: pin every install with hashes from pyproject.toml: requirements.lock (the runtime: the image,
## the bench runtime), requirements-dev.lock (make dev: the runtime pins plus the test tools) and
## build-requirements.lock (the build-system). Keeps existing pins that still fit; lock-upgrade takes the newest.
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command 'make lock' --quiet

lock: $(STAMP)
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) $(LOCK_ARGS) -o requirements.lock
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV) pip compile - $(LOCK_FLAGS) $(LOCK_ARGS) -o build-requirements.lock
	$(UV) pip compile pyproject.toml --extra dev -c requirements.lock -c build-requirements.lock \
	  $(LOCK_FLAGS) $(LOCK_ARGS) -o requirements-dev.lock

lock-upgrade:
	$(MAKE) lock LOCK_ARGS=--upgrade

## image: build the container image (podman, else docker); IMAGE=name:tag, PYTHON_IMAGE=base to override
image:
	tools/image/build.sh

## release: the image and the chart into an OCI registry, signed, with an SBOM (tools/release/release.py):
## REGISTRY=host[:port][/path] (required), VERSION= (optional; must equal __version__), COSIGN_KEY=cosign.key and
## COSIGN_PASSWORD (cosign generate-key-pair makes them), REGISTRY_CA= (a private CA), REGISTRY_AUTH_FILE=
release: dev
	tools/controlplane/build.sh helm cosign
	$(PY) tools/release/release.py

## image-gateway: the gateway test image on top of the keeper's (after make image); KEEPER_IMAGE=, IMAGE= to override
image-gateway:
	tools/image/build-gateway.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
