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

.PHONY: up test lint typecheck pytest install lock clean vendor browser

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

## Re-vendor the browser assets (htmx, uPlot, Swagger UI; axe-core for the tests) from
## web/package-lock.json. The copies are committed, so `make up` needs no npm; run this
## after changing a version in web/package.json (then `npm install --package-lock-only`).
VENDOR_DIR := platform/console/static/vendor
vendor:
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	mkdir -p $(VENDOR_DIR) tests/browser/vendor
	cp web/node_modules/htmx.org/dist/htmx.min.js $(VENDOR_DIR)/htmx.min.js
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
test: $(STAMP) $(CHECKOV_STAMP) browser lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) $(CHECKOV_STAMP) browser
	$(VENV)/bin/pytest -n auto --dist loadgroup

## Re-resolve requirements.lock (and requirements-checkov.lock) after changing dependencies.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock -q
	$(VENV)/bin/uv pip compile requirements-checkov.in --python-version 3.11 -o requirements-checkov.lock -q

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) var build dist *.egg-info
