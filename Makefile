# Entry points for developers and CI (.ci/run runs `make test`).
# `install` is idempotent and takes a couple of seconds when everything is already there.
SHELL := /bin/bash
VENV := .venv

.PHONY: install test demo lint

install:
	bash scripts/install.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests scripts/demo.py

test: install lint
	$(VENV)/bin/pytest -q tests

demo: install
	$(VENV)/bin/python scripts/demo.py
