# bastion: set-up and everyday commands.
#
#   make demo [ARGS=...]   run `bastion demo` on its embedded defaults, state in .bastion-demo/
#   make test [ARGS=...]   run the test suite (tests/ only, never benchmarks/)
#   make bench             run benchmarks/*.py, one after the other
#   make lint              ruff and mypy, where installed in .venv (optional)
#   make clean             remove .venv, caches, build output and .bastion-demo/
#
# demo, test and bench first run .ci/bootstrap, which installs missing Debian
# packages (as root; otherwise it names them) and the Python dependencies.
# When nothing changed it only checks, and says "python deps up to date".

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
ARGS ?=
SOURCES := bastion shell policies recorders

.DEFAULT_GOAL := help
.PHONY: help demo test bench lint clean setup-demo setup-test

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

# Idempotent and fast when nothing changed: see .ci/bootstrap.
setup-demo:
	@bash .ci/bootstrap demo

setup-test:
	@bash .ci/bootstrap test

demo: setup-demo
	$(VENV)/bin/bastion demo --dir .bastion-demo $(ARGS)

# ARGS replaces the default path, e.g. make test ARGS='tests/test_ca.py -x'.
# A run that collects no test fails (pytest exit 5): an empty suite proves nothing.
test: setup-test
	$(VENV)/bin/pytest -q $(if $(strip $(ARGS)),$(ARGS),tests)

# Each script prints its own comparison; files named _*.py are helpers.
bench: setup-test
	@shopt -s nullglob; ran=0; \
	for f in benchmarks/*.py; do \
	  case $${f##*/} in _*) continue ;; esac; \
	  echo "== $$f"; $(VENV)/bin/python "$$f"; ran=1; \
	done; \
	[ $$ran = 1 ] || echo "make bench: no benchmarks/*.py yet"

lint:
	@rc=0; ran=0; \
	if [ -x $(VENV)/bin/ruff ]; then ran=1; $(VENV)/bin/ruff check . || rc=1; fi; \
	if [ -x $(VENV)/bin/mypy ]; then ran=1; $(VENV)/bin/mypy $(SOURCES) || rc=1; fi; \
	[ $$ran = 1 ] || echo "make lint: neither ruff nor mypy is in $(VENV) ($(VENV)/bin/pip install ruff mypy)"; \
	exit $$rc

clean:
	rm -rf $(VENV) .bastion-demo build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
