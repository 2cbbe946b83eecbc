# pulseline: one image for the edge, the Ray head and Ray workers (docs/operations.md).
#
#   docker build -t pulseline:0.1.0 .
#   docker compose -f deploy/compose.yaml up
#
# Slim, non-root, pinned: a pinned Python base, every Python package exact from
# deploy/constraints.txt (the tested environment), no compilers in the final image.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# python3: both the python image and a plain Debian base (python3.11) have it
RUN python3 -m venv /opt/pulseline
WORKDIR /src
COPY deploy/constraints.txt deploy/constraints.txt
COPY pyproject.toml README.md ./
COPY actors actors
COPY api api
COPY clients/js clients/js
COPY cluster cluster
COPY devices devices
COPY history history
COPY launch launch
COPY leaderboards leaderboards
COPY sims sims
COPY storage storage
RUN /opt/pulseline/bin/pip install -c deploy/constraints.txt .

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/pulseline pulseline \
    && mkdir -p /data && chown pulseline:pulseline /data
COPY --from=build /opt/pulseline /opt/pulseline
ENV PATH=/opt/pulseline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    PULSELINE_HOST=0.0.0.0 \
    PULSELINE_DATA_DIR=/data \
    PULSELINE_LOG_FORMAT=json \
    PULSELINE_LOG_LEVEL=INFO \
    PULSELINE_METRICS_HOST=0.0.0.0 \
    PULSELINE_METRICS_PORT=9100
USER 10001:10001
WORKDIR /home/pulseline
# 8000: the edge (HTTP + WebSockets); 9100: its metrics listener (no auth: keep it private)
EXPOSE 8000 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["/opt/pulseline/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2)"]
ENTRYPOINT ["pulseline"]
CMD ["up"]
