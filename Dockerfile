# syntax=docker/dockerfile:1
# Multi-stage: the builder compiles annoy and installs the locked dependencies into a venv; the
# final image holds only that venv, runs as a non-root user and has no compilers.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 UV_PROJECT_ENVIRONMENT=/opt/venv
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir uv==0.13.9
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /home/app app \
    && mkdir -p /artifacts /data && chown app:app /artifacts
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SIMILARITY_HOST=0.0.0.0 \
    SIMILARITY_PORT=8000 \
    SIMILARITY_ARTIFACTS_DIR=/artifacts \
    SIMILARITY_BUILD_ARTIFACTS_DIR=/artifacts \
    SIMILARITY_BUILD_DATA_DIR=/data
USER app
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["python", "-m", "similarity_api"]
CMD ["serve"]
