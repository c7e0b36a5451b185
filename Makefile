# The two commands of the README:  `make train`  and  `make test`.
# Both build the virtual environment first (tools/venv.sh; cached outside the clone). The venv
# holds only the dependencies; every recipe, and every process it starts, imports this clone's
# code first through PYTHONPATH, so clones sharing one cached venv never import each other's.
PY := .venv/bin/python
# `make train` is the README's main job; CONFIG=... and WORKDIR=... change it (the workdir
# defaults to workdirs/<config name>, relative to this directory).
CONFIG ?= configs/slate.py
WORKDIR ?=
# `make test ARGS="tests/test_losses.py -k grpo"`: run only these pytest arguments.
ARGS ?=
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: venv train test test-slow lint

venv:
	@bash tools/venv.sh

train: venv
	$(PY) -m experiments.train --config=$(CONFIG)$(if $(WORKDIR), --workdir=$(WORKDIR))

# Default suite (< 15 min on 2 CPU cores): single-device tests, then the multi-device tests in
# their own process (they simulate 8 CPU devices, which must happen before JAX starts).
test: venv
ifeq ($(strip $(ARGS)),)
	$(PY) -m pytest -q -m "not slow" --durations=15 --ignore=tests/multidevice
	$(PY) -m pytest -q -m "not slow" tests/multidevice
else
	$(PY) -m pytest -q $(ARGS)
endif

test-slow: venv
	$(PY) -m pytest -q -m slow --ignore=tests/multidevice

lint: venv
	.venv/bin/ruff check .
