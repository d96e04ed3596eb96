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
# pip is upgraded first: Python 3.11's bundled pip 23.2 spent 35 s of CPU on the runtime
# packages where pip 26 spends 20-24 s (and 3 s upgrading itself).
$(RUNTIME): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
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
