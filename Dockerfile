# syntax=docker/dockerfile:1
# The Celeriac image: one image for every process (api, the three worker pools, beat,
# migrate); the chart and docker-compose.yml pick the process by its arguments.
#
#   make image                      # docker or podman; see the Makefile for the variables
#
# The RDS CA bundle comes in through the named build context `rds-ca` (a folder holding
# global-bundle.pem): `make image` makes it from the npm package pinned in
# docker/rds-ca/package-lock.json and checks it (docker/rds-ca/bundle.js).

# A slim Debian Python 3.11 (image and tag apart, so that a local base can stand in:
# PYTHON_IMAGE=localhost/base PYTHON_TAG=bookworm). Pin it by digest where you build
# releases (--build-arg PYTHON_TAG=3.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python
ARG PYTHON_TAG=3.11-slim-bookworm

# --- build: the wheel, and a virtualenv with the runtime lock and that wheel -------------
FROM ${PYTHON_IMAGE}:${PYTHON_TAG} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/celeriac
# The dependencies first, from the runtime-only lock (no test or lint tools), every file
# checked against the lock's hashes: this layer is rebuilt only when the lock changes.
# A build machine behind a TLS-inspecting proxy passes its CA bundle as the build secret
# `pip-ca` (make image PIP_CA=...): used by these two pip steps only, never in a layer.
COPY requirements-runtime.lock /src/
RUN --mount=type=secret,id=pip-ca,required=false \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && /opt/celeriac/bin/pip install --no-deps --require-hashes -r /src/requirements-runtime.lock
COPY pyproject.toml README.md /src/
COPY platform /src/platform
COPY workers /src/workers
COPY migrations /src/migrations
COPY client /src/client
# A real wheel (not the source tree): what ships is what setuptools' package list holds.
RUN --mount=type=secret,id=pip-ca,required=false \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && /opt/celeriac/bin/pip wheel --no-deps --wheel-dir /dist /src \
 && /opt/celeriac/bin/pip install --no-deps /dist/celeriac-*.whl \
 && /opt/celeriac/bin/pip uninstall --yes pip \
 && /opt/celeriac/bin/python -c "import celeriac.platform.cli"

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}:${PYTHON_TAG} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="celeriac" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="Celeriac: multi-tenant data-processing workflows on Celery"
# UID/GID 10001, as the chart's podSecurityContext; no home, no login shell.
RUN groupadd --system --gid 10001 celeriac \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin celeriac \
 && mkdir -p /var/lib/celeriac /srv/celeriac \
 && chown 10001:10001 /var/lib/celeriac /srv/celeriac
COPY --from=build /opt/celeriac /opt/celeriac
# Amazon RDS's CA bundle: libpq verifies the database's certificate against it with
# sslmode=verify-full (PGSSLROOTCERT is libpq's variable, not a Celeriac setting).
COPY --from=rds-ca global-bundle.pem /etc/ssl/certs/rds-global-bundle.pem
COPY docker/celeriac-alive /usr/local/bin/celeriac-alive
# Read-only root friendly: no byte-code written at run time (pip compiled it at install),
# every writable path is /tmp or CELERIAC_VAR_DIR (both volumes in the chart and compose).
ENV PATH=/opt/celeriac/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PGSSLROOTCERT=/etc/ssl/certs/rds-global-bundle.pem \
    CELERIAC_VAR_DIR=/var/lib/celeriac
WORKDIR /var/lib/celeriac
USER 10001:10001
EXPOSE 8000
# Workers and beat touch a heartbeat file from their own loop; a stale one is unhealthy.
# The chart and docker-compose.yml give each process its own probe (the API's is HTTP).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["celeriac-alive"]
ENTRYPOINT ["celeriac"]
CMD ["--help"]
