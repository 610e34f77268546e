# syntax=docker/dockerfile:1
# The image behind deploy/k8s: one image, every role, chosen by the command (`faultline api | worker |
# scheduler | migrate | worker-check`), the same entry points `faultline up` starts locally.
# tests/unit/test_dockerfile.py checks every COPY source exists and every command is one the project has.

# --- the dashboard's Socket.IO client, from the npm registry (not kept in the repo) ---------------------
FROM node:20-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --omit=dev

# --- the application ---------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app
WORKDIR /app
# Dependencies first (their layer survives code changes): the runtime dependencies of pyproject.toml, at
# exactly the versions of requirements.lock (the lock also lists dev tools; the constraint installs none).
COPY pyproject.toml requirements.lock ./
COPY core ./core
COPY api ./api
COPY workers ./workers
COPY realtime ./realtime
COPY health ./health
COPY faultline ./faultline
COPY --from=assets /src/node_modules/socket.io-client/dist/socket.io.min.js ./realtime/static/vendor/socket.io.min.js
RUN python -m venv /opt/venv \
 && pip install --constraint requirements.lock . \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /app --shell /usr/sbin/nologin faultline
# Non-root, and nothing under /app is writable by it: the pods run with a read-only root filesystem and
# get /tmp and the metrics dir as emptyDirs.
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["faultline"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
