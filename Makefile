# The two commands of the README:  `make train`  and  `make test`.
# Both build the virtual environment first (tools/venv.sh; cached outside the clone).
PY := .venv/bin/python
WORKDIR ?= workdirs/default
CONFIG ?= configs/sft.py

.PHONY: venv train test test-fast test-multidevice test-slow bench lint

venv:
	@bash tools/venv.sh

train: venv
	$(PY) -m experiments.train --config=$(CONFIG) --workdir=$(WORKDIR)

# Default suite (< 15 min on 2 CPU cores): single-device tests, then the multi-device tests in
# their own process (they simulate 8 CPU devices, which must happen before JAX starts).
test: venv
	$(PY) -m pytest -q -m "not slow" --ignore=tests/multidevice
	$(PY) -m pytest -q -m "not slow" tests/multidevice

test-slow: venv
	$(PY) -m pytest -q -m slow --ignore=tests/multidevice

lint: venv
	.venv/bin/ruff check .
