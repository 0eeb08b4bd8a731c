# The README's commands. Everything installs into .venv from this project's own files.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: demo test ui validate bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Bytecode for our own sources (pip compiles the dependencies): Dagster loads the code
	# location in fresh processes, and compiling every module each time costs ~0.3 s.
	$(BIN)/python -m compileall -q campaignflow
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

## make demo: install, then run the main job on embedded defaults
demo: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/campaignflow demo

## make test: install dev extras, run the whole suite
test: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m pytest

## make ui: the Dagster UI on http://127.0.0.1:3000
ui: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

validate: $(STAMP)
	$(BIN)/campaignflow validate configs

bench: $(STAMP)
	$(BIN)/python benchmarks/validate.py

clean:
	rm -rf $(VENV) .campaignflow .dagster_home .pytest_cache
