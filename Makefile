# Every target creates or reuses .venv, so a fresh machine needs only python3 (>= 3.11) and its
# package manager: scripts/system-deps.sh installs the rest (python3-venv, the tests' tools).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: deps venv demo test bench lint typecheck models wheelhouse gateway-check clean soak

# System packages the tests use (mbpoll, socat, systemd-analyze, ssh); nothing when all are there.
deps:
	@PYTHON=$(PYTHON) bash scripts/system-deps.sh test

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || { PYTHON=$(PYTHON) bash scripts/system-deps.sh venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 (the export extra) is a CPU wheel on local disk; a looser pin pulls CUDA.
	$(BIN)/python -m pip install --quiet -e '.[test,export]'
	rm -f $(VENV)/.installed-* && touch $@

demo: venv
	$(BIN)/edge-agent demo -c configs/demo.yaml

test: deps venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: venv
	$(BIN)/python bench/report.py

lint: venv
	$(BIN)/ruff check agent simulator export tests bench
	$(BIN)/mypy

typecheck: lint

# Rebuild the shipped models from plant recordings (seeded: what it builds is what ships).
models: venv
	bash models/build.sh

# Wheels for an offline gateway install (x86_64 and aarch64, CPython 3.11, manylinux), the
# project's own and the build backend included: systemd/install.sh --wheels wheelhouse
wheelhouse: venv
	$(BIN)/python scripts/wheelhouse.py wheelhouse

# Boot Debian 12 (debootstrap + systemd-nspawn -b), install from ./wheelhouse, run the unit with
# the shipped models against the embedded plant (root; see README "Gateway").
gateway-check: wheelhouse
	bash scripts/gateway-check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# 100,000 agent cycles back to back against the embedded plant with faults on a schedule
# (RSS, tasks, threads and fds must not grow; every change audited). CI runs a short version.
soak: venv
	$(BIN)/python -m tests.soak.soak --cycles 100000
