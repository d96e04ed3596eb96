# Two commands do all set-up: `make demo` runs the mesh, `make test` runs the checks and tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNTIME := $(VENV)/.runtime
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH):/usr/sbin

.PHONY: demo test postgres kustomize chromium lint layers typecheck protos protos-check catalog-check unit integration bench clean nats

# The demo needs only the runtime packages; the checks add the dev tools (linters, type checker,
# test runner, the openai client, schema validators) on top. On this machine the dev extras
# took as long to install as the runtime itself, so `make demo` from a fresh clone skips them.
# uv (pinned in constraints.txt, fetched once into .cache/uv by the system's pip) makes the
# virtual environment and installs the same pinned packages: measured here, the runtime with
# its bytecode compiled in 16 s of CPU where venv + pip spent about 30 s (ensurepip 5-7 s, pip's
# upgrade 2-3 s, the install 20-24 s), and in a fraction of the wall time (README). --compile-bytecode keeps
# what pip did: without it the demo's 33 processes, started together, each compiled the same
# modules on first import (the demo took 232 s of CPU instead of about 100). --seed puts pip in
# .venv, so `.venv/bin/pip install -e '.[plots]'` and the like still work.
UV := .cache/uv/bin/uv
UV_INSTALL := $(UV) pip install -q --compile-bytecode --python $(PY) -c constraints.txt

$(UV): constraints.txt
	$(PYTHON) -m pip install -q --disable-pip-version-check --upgrade --target .cache/uv -c constraints.txt uv
	touch $(UV)

$(RUNTIME): pyproject.toml constraints.txt $(UV)
	$(UV) venv -q --seed --allow-existing --python $(PYTHON) $(VENV)
	$(UV_INSTALL) -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(UV_INSTALL) -e '.[dev]'
	touch $(STAMP)

nats:
	@scripts/ensure_nats_server.sh

## postgres: PostgreSQL's server binaries; the tests start a throwaway server of their own
postgres:
	@scripts/ensure_postgres.sh

## chromium: headless browser for the adaptation heatmap's screenshot test
chromium:
	@scripts/ensure_chromium.sh

## kustomize: renders deploy/k8s in the manifest test (pinned release binary, .cache/bin)
kustomize:
	@scripts/ensure_kustomize.sh >/dev/null

## demo: start the whole mesh, evaluate an industry pack on every chip type, report, stop it
demo: $(RUNTIME) nats
	$(VENV)/bin/pocgrid demo

## test: lint, type-check, generated-code drift check, then every test
# In TEST_WORKERS processes (pytest-xdist): the integration tests mostly wait on servers and
# timers, so 4 workers on 2 cores take about half the wall time of one. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 4
test: $(STAMP) nats postgres chromium kustomize lint layers typecheck protos-check catalog-check
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## layers: imports point one way (contracts in pyproject.toml, [tool.importlinter])
layers: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(VENV)/bin/mypy

protos: $(STAMP)
	$(PY) -m tools.gen_protos

protos-check: $(STAMP)
	$(PY) -m tools.gen_protos --check

## catalog-check: the committed catalogue matches ../shared/data/catalog
catalog-check: $(STAMP)
	$(PY) -m tools.build_catalog --check

bench: $(STAMP) nats
	$(PY) -m bench.gateway_overhead
	$(PY) -m bench.registry_scale
	$(PY) -m bench.adapt_matrix

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
