# syntax=docker/dockerfile:1
# Registry Gateway: the token authority for a Docker Distribution registry.
#
#   docker build -t registry-gateway .
#   docker run -d -p 5001:5001 -v gateway-data:/data -v "$PWD/policies:/policies:ro" \
#     -e REGISTRY_GATEWAY_SERVICE=registry.example.com \
#     -e REGISTRY_GATEWAY_PUBLIC_URL=https://gateway.example.com registry-gateway
#   docker run --rm -v gateway-data:/data registry-gateway keys bundle > gateway-bundle.pem
#
# Every setting is a REGISTRY_GATEWAY_* variable (docs/configuration.md). /data holds the
# signing keys: keep it on a volume, or every restart makes keys the registry does not trust.
# A bind-mounted /data must be writable by uid 10001.

# Pin the base by digest too where you build for production (python:3.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with the locked dependencies and the gateway -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/registry-gateway
# Every dependency at the version requirements.lock names, checked against its hashes: the
# image gets what the tests ran with, whatever PyPI holds that day. A layer of its own, rebuilt
# only when the lock changes. (The lock: `uv pip compile`, see its first lines.)
COPY requirements.lock ./
RUN /opt/registry-gateway/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY ui ./ui
# The gateway itself and no other package (its build backend is fetched for the build only);
# `pip check` fails the build when the lock no longer satisfies pyproject.toml.
RUN /opt/registry-gateway/bin/pip install --no-deps . \
    && /opt/registry-gateway/bin/pip check

# -- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="registry-gateway" \
      org.opencontainers.image.description="Policy-as-code token authority for Docker/OCI registries" \
      org.opencontainers.image.licenses="Apache-2.0"

# git and ssh: for policy_git (a policy cloned over https or ssh), and so that a mounted policy
# checkout is served under its commit as the revision. safe.directory: a mounted checkout
# belongs to another uid, which git refuses by default.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory '*' \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin gateway \
    && mkdir -p /data /policies \
    && chown gateway:gateway /data \
    && chmod 0700 /data

COPY --from=build /opt/registry-gateway /opt/registry-gateway

ENV PATH=/opt/registry-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REGISTRY_GATEWAY_DATA_DIR=/data \
    REGISTRY_GATEWAY_POLICIES=/policies \
    REGISTRY_GATEWAY_LISTEN=0.0.0.0:5001

# Numeric, so that Kubernetes' runAsNonRoot can tell it is not root (deployment.yaml).
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 5001

# No curl in the slim image: Python asks /healthz (200 while a valid policy is loaded).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('REGISTRY_GATEWAY_LISTEN', ':5001').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["registry-gateway"]
CMD ["serve"]
