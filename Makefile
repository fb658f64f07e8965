# Two entry points for a fresh machine: `make run` (the quick-start pipeline on a
# LocalCluster) and `make test`.  Both create the virtual environment when missing.
PYTHON ?= python3
VENV ?= .venv
RUN ?= runs/quickstart
PIPELINE ?= pipelines/quickstart.toml
# Use the local copy of the training data when there is one (else it is fetched).
SHARED_DB := $(wildcard ../shared/data/sp2_sacada.db)
ifneq ($(SHARED_DB),)
export LEGODASK_SACADA_DB ?= $(abspath $(SHARED_DB))
endif

.PHONY: run test venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# the CPU build of torch first, or pip may fetch a multi-GB CUDA build
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	$(VENV)/bin/python -m pip install -q -e '.[test,cluster]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/legodask run $(PIPELINE) --run $(RUN)

test: venv
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=15

clean:
	rm -rf $(VENV) runs
