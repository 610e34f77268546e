# syntax=docker/dockerfile:1
# The image behind deploy/k8s: one image, every role, chosen by the command (`faultline api | worker |
# scheduler | migrate | worker-check`), the same entry points `faultline up` starts locally.
# tests/unit/test_dockerfile.py checks every COPY source exists and every command is one the project has.

# --- browser assets from the npm registry (not kept in the repo): Socket.IO client, Swagger UI for /docs ---
FROM node:20-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
# Exactly the lock; no install hooks (swagger-ui-dist's @scarf/scarf would send analytics from the build).
RUN npm ci --ignore-scripts --no-audit --no-fund --omit=dev

# --- the application ---------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app
WORKDIR /app
# Production mode: the app refuses to start without a strong FAULTLINE_ADMIN_TOKEN (and refuses short or
# development secrets). No token has a default here: they come from the orchestrator's secret at run time.
# BIND_HOST says the API listens beyond loopback (as the CMD does), where no development default is allowed
# in any mode (core/settings.py).
ENV FAULTLINE_ENV=production \
    FAULTLINE_BIND_HOST=0.0.0.0
# Dependencies first, in their own layer (it survives code changes): exactly the files whose sha256 hashes
# requirements.runtime.lock pins (pip checks every hash; --no-deps: nothing unlisted comes in).
COPY requirements.runtime.lock ./
RUN python -m venv /opt/venv \
 && pip install --require-hashes --no-deps -r requirements.runtime.lock
COPY pyproject.toml ./
COPY core ./core
COPY api ./api
COPY workers ./workers
COPY realtime ./realtime
COPY health ./health
COPY faultline ./faultline
COPY --from=assets /src/node_modules/socket.io-client/dist/socket.io.min.js ./realtime/static/vendor/socket.io.min.js
COPY --from=assets /src/node_modules/swagger-ui-dist/swagger-ui-bundle.js /src/node_modules/swagger-ui-dist/swagger-ui.css ./realtime/static/vendor/swagger-ui/
# The project itself, without dependencies (all installed above): only its `faultline` entry point is new.
RUN pip install --no-deps . \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /app --shell /usr/sbin/nologin faultline
# Non-root, and nothing under /app is writable by it: the pods run with a read-only root filesystem and
# get /tmp and the metrics dir as emptyDirs.
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["faultline"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
