# syntax=docker/dockerfile:1
# One image for every callstream service; the service is the command:
#   docker run --rm callstream normalizer --kafka kafka:9092 --metrics-port 9100
# Needs BuildKit (the default of Docker Engine >= 23 and of `docker compose`).

# --- builder: the project and its locked dependencies as wheels in /wheels -------------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# The runtime lock first: its layer is rebuilt only when the lock changes.
COPY requirements/main.txt ./requirements/
RUN pip wheel --require-hashes --wheel-dir /wheels -r requirements/main.txt
COPY pyproject.toml README.md ./
COPY callstream ./callstream
COPY ingest ./ingest
COPY foundation ./foundation
COPY normalize ./normalize
COPY schemas ./schemas
COPY sinks ./sinks
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: the wheels installed, no build tools, no sources, non-root ---------------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="callstream" \
      org.opencontainers.image.description="Provider call-status reports into one canonical stream of call events on Kafka." \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    CALLSTREAM_LOG__JSON=true
# The wheels are bind-mounted from the builder, so they never become a layer of this image;
# exactly the locked versions are installed, checked against the lock's hashes.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/src/requirements,target=/requirements \
    pip install --no-index --find-links=/wheels --require-hashes -r /requirements/main.txt \
 && pip install --no-index --no-deps /wheels/callstream-*.whl \
 && groupadd --system --gid 10001 callstream \
 && useradd --system --uid 10001 --gid callstream --home-dir /app --create-home \
        --shell /usr/sbin/nologin callstream \
 && install -d -o callstream -g callstream /app/.callstream
USER callstream:callstream
# The working directory is the user's: `up`, `store` with its default SQLite URL and the
# aggregator's state write .callstream/ here (made in the image, so that a volume mounted there
# is the user's).
WORKDIR /app
# 8080: the ingress (also /healthz, /readyz, /metrics); 9100: a service's --metrics-port.
EXPOSE 8080 9100
ENTRYPOINT ["callstream"]
CMD ["--help"]
