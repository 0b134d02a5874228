# syntax=docker/dockerfile:1
# scaleengine-exporter: Prometheus exporter for ScaleEngine usage.vse data.
#
#   docker build -t scaleengine-exporter .
#   docker run -p 8491:8491 \
#     -v "$PWD/config.yaml:/etc/scaleengine-exporter/config.yaml:ro" \
#     -e SCALEENGINE_API_KEY -e SCALEENGINE_API_SECRET scaleengine-exporter
#
# Secrets: SCALEENGINE_API_KEY / SCALEENGINE_API_SECRET in the environment, or
# scaleengine.api_key_file / api_secret_file in the config pointing at Docker
# secrets (/run/secrets/...).

# --- build: the exporter's wheel and the wheels of its dependencies ---------------
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY exporter/ exporter/
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

# --- final: the wheels installed, no build tools, non-root --------------------------
FROM python:3.12-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="scaleengine-exporter" \
      org.opencontainers.image.description="Prometheus exporter for ScaleEngine usage.vse bandwidth and request data" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12-slim"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEALTHCHECK_URL=http://127.0.0.1:8491/-/healthy

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links=/wheels /wheels/scaleengine_exporter-*.whl \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /var/lib/scaleengine-exporter --shell /usr/sbin/nologin exporter \
    && mkdir -p /etc/scaleengine-exporter /var/lib/scaleengine-exporter \
    && chown exporter:exporter /var/lib/scaleengine-exporter

# the counters survive restarts in this volume (--state.path below)
VOLUME ["/var/lib/scaleengine-exporter"]
WORKDIR /var/lib/scaleengine-exporter
USER 10001:10001
EXPOSE 8491

# No curl in the image: Python's urllib. Set HEALTHCHECK_URL if you change
# --web.listen-address or serve TLS.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4).status == 200 else 1)"]

ENTRYPOINT ["scaleengine-exporter"]
CMD ["--config", "/etc/scaleengine-exporter/config.yaml", \
     "--state.path", "/var/lib/scaleengine-exporter/state.json"]
