# The two commands a newcomer needs: `make serve` and `make test`. Both create the
# project's own virtual environment (.venv) and install into it on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

BENCH_STAMP := $(VENV)/.bench-stamp
RAY_STAMP := $(VENV)/.ray-stamp

.PHONY: serve test lint install bench-install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(PY) -m loader prepare-demo models
	$(PY) -m loader serve --config config.yaml

# The tests also need Ray Serve (the optional `ray` extra); `make serve` stays light.
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	touch $(RAY_STAMP)

# Static checks first (seconds), then the suite.
lint: $(RAY_STAMP)
	$(VENV)/bin/ruff check loader policies tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

# Benchmarks (not part of the tests): `make bench-install`, then one command each, e.g.
# .venv/bin/python bench/throughput.py (see docs/benchmarks.md).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench-install: $(BENCH_STAMP)

clean:
	rm -rf $(VENV) .modelwatch models .pytest_cache .hypothesis
