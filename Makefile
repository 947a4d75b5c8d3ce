# Entry points for developers and CI (.ci/run runs `make test`).
# `install` is idempotent and takes a couple of seconds when everything is already there.
SHELL := /bin/bash
VENV := .venv

.PHONY: install test demo lint bench

install:
	bash scripts/install.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests scripts/demo.py benchmarks

test: install lint
	$(VENV)/bin/pytest -q --durations=30 tests

demo: install
	$(VENV)/bin/python scripts/demo.py

# The benchmark (benchmarks/README.md): this runner vs barman-cloud-backup vs the raw limits on a
# ~1 GiB cluster. Options go in BENCH, e.g. make bench BENCH="--size-mib 200 --codecs gzip --jobs 2"
bench: install
	$(VENV)/bin/python -m benchmarks.run $(BENCH)
