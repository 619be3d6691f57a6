# The two set-up commands:  `make deploy` (the hub on the local default)  and  `make test`.
VENV   ?= .venv
PARAMS ?= parameters/local.yaml
PYTHON ?= python3

.PHONY: deploy plan test test-all engine install
deploy: engine install  ## bring up JupyterHub on the parameters (default: a single-node Swarm here)
	$(VENV)/bin/hubops deploy -p $(PARAMS)

plan: engine install    ## show what deploy would change
	$(VENV)/bin/hubops deploy -p $(PARAMS) --plan

test: engine install    ## unit, integration (real engine) and end-to-end tests, without the long (slow) suites
	@bash scripts/ensure-test-tools.sh
	$(VENV)/bin/pytest -m "not slow" tests

test-all: engine install  ## every suite, the long lab, fault and version suites (marker slow) included
	@bash scripts/ensure-test-tools.sh
	$(VENV)/bin/pytest tests

engine:
	@bash scripts/ensure-docker.sh

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@
