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

.PHONY: up test lint typecheck pytest install lock clean

$(STAMP): requirements.lock pyproject.toml client/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(PY) -q -r requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) -q --no-deps --no-build-isolation -e . -e ./client
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

## Re-resolve requirements.lock (and requirements-checkov.lock) after changing dependencies.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock -q
	$(VENV)/bin/uv pip compile requirements-checkov.in --python-version 3.11 -o requirements-checkov.lock -q

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) var build dist *.egg-info
