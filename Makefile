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

.PHONY: up test lint typecheck pytest install lock clean image

# The container image (Dockerfile). Docker where an engine answers, else podman; e.g. on a
# machine without a registry: make image PYTHON_IMAGE=localhost/base:bookworm
# CONTAINER_ENGINE="podman --storage-driver vfs" BUILD_FLAGS="--isolation chroot".
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= celeriac:$(VERSION)
PYTHON_IMAGE ?= python:3.11-slim-bookworm
CONTAINER_ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
BUILD_FLAGS ?=
RDS_CA_URL := https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
# A folder holding global-bundle.pem; the default is downloaded and checked below.
RDS_CA_DIR ?= build/rds-ca

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(PY) -q -r requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(CHECKOV_STAMP): requirements-checkov.lock $(STAMP)
	test -x $(CHECKOV_VENV)/bin/python || python3 -m venv $(CHECKOV_VENV)
	$(VENV)/bin/uv pip install --python $(CHECKOV_VENV)/bin/python -q -r requirements-checkov.lock
	touch $(CHECKOV_STAMP)

install: $(STAMP) $(CHECKOV_STAMP)

## Run the whole platform on its embedded defaults (SQLite, filesystem broker, local keys).
up: $(STAMP)
	$(VENV)/bin/celeriac up

## Lint, type-check and run every test against the machine's PostgreSQL and Redis.
test: $(STAMP) $(CHECKOV_STAMP) lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) $(CHECKOV_STAMP)
	$(VENV)/bin/pytest -n auto --dist loadgroup

## Re-resolve requirements.lock after changing dependencies, then the image's runtime-only
## lock (the same pins, without the dev extra; hashed) and requirements-checkov.lock.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock -q
	$(VENV)/bin/uv pip compile pyproject.toml -c requirements.lock --generate-hashes --python-version 3.11 -o requirements-runtime.lock -q
	$(VENV)/bin/uv pip compile requirements-checkov.in --python-version 3.11 -o requirements-checkov.lock -q

## Build the container image (one image, every process; see Dockerfile).
image: $(RDS_CA_DIR)/global-bundle.pem
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) $(if $(findstring podman,$(CONTAINER_ENGINE)),--format docker) \
	  --build-context rds-ca=$(RDS_CA_DIR) \
	  --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) --build-arg VERSION=$(VERSION) -t $(IMAGE) .

build/rds-ca/global-bundle.pem:
	mkdir -p $(@D)
	curl -fsSL --proto '=https' --tlsv1.2 -o $@.part $(RDS_CA_URL)
	# Refuse anything that is not a bundle of Amazon RDS certificate authorities.
	openssl storeutl -noout -text -certs $@.part | grep -q 'Issuer:.*Amazon RDS'
	mv $@.part $@

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) var build dist *.egg-info
