# The two set-up commands:  `make deploy` (the hub on the local default)  and  `make test`.
VENV   ?= .venv
PARAMS ?= parameters/local.yaml
PYTHON ?= python3

.PHONY: deploy plan test test-all system engine install
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

system:                 ## python3 with venv, git, ip, iptables, curl: installed with apt-get when missing
	@PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/ensure-system.sh

engine: system
	@bash scripts/ensure-docker.sh

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@
