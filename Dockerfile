# syntax=docker/dockerfile:1
# One image for every pixpress service; the command picks the service:
#   pixpress-ingest (default) | pixpress-compressor | pixpress-aggregator | pixpress-notifier
# Build: docker build -t pixpress:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build stage: the package and its runtime dependencies only (no extras), at the versions constraints.txt pins
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# gcc and libjpeg62-turbo-dev compile the compressor's C extension (services/compressor/_jpegdct.c)
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libjpeg62-turbo-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/pixpress
WORKDIR /src
COPY . .
RUN /opt/pixpress/bin/pip install --no-cache-dir -c constraints.txt .

# --- runtime stage: only the venv, run as an unprivileged numeric user (Kubernetes runAsNonRoot can verify it)
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/pixpress/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIXPRESS_API_HOST=0.0.0.0 \
    PIXPRESS_API_PORT=5000 \
    PIXPRESS_HEALTH_HOST=0.0.0.0 \
    PIXPRESS_HEALTH_PORT=8080
# the C extension links the system libjpeg-turbo at run time
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjpeg62-turbo \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 pixpress \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pixpress
COPY --from=build /opt/pixpress /opt/pixpress
WORKDIR /tmp
USER 10001:10001
# 5000: ingest API (GET /healthz there too); 8080: /healthz of compressor, aggregator and notifier
EXPOSE 5000 8080
# Services finish in-flight work on SIGTERM (exec form: the process is PID 1 and receives it directly).
STOPSIGNAL SIGTERM
CMD ["pixpress-ingest"]
