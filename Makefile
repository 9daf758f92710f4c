# The two commands a newcomer needs: `make serve` and `make test`. Both create the
# project's own virtual environment (.venv) and install into it on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

BENCH_STAMP := $(VENV)/.bench-stamp
RAY_STAMP := $(VENV)/.ray-stamp

.PHONY: serve test lint browser azurite install bench-install load-generators clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The demo model, and TF Serving's own test model as `default` (the README's classify and
# regress examples read its signatures; Apache-2.0, see tests/testdata/tfserving).
TFS_DEFAULT_MODEL := tests/testdata/tfserving/saved_model_half_plus_two_cpu
serve: $(STAMP)
	$(PY) -m loader prepare-demo models
	@[ -d models/default ] || cp -r $(TFS_DEFAULT_MODEL) models/default
	$(PY) -m loader serve --config config.yaml

# The tests also need Ray Serve (the optional `ray` extra); `make serve` stays light.
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	touch $(RAY_STAMP)

# Static checks first (seconds), then the suite.
lint: $(RAY_STAMP)
	$(VENV)/bin/ruff check loader policies tests bench
	$(VENV)/bin/mypy

# The operator page's browser tests drive Debian's chromium through its chromedriver. As
# root (CI), install them when missing; without root or apt-get, or if the install fails,
# those tests skip and say why: the run goes on.
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
browser:
	$(call apt-install,$(CHROMIUM) $(CHROMEDRIVER),chromium chromium-driver,the browser tests will skip)

# $(call apt-install,FILES,PACKAGES,CONSEQUENCE): when one of FILES is missing, install
# the Debian PACKAGES as root; without root or apt-get, or if that fails, say so and go on.
define apt-install
	@missing=; for f in $(1); do [ -x "$$f" ] || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(2) (apt-get)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends $(2); } >/dev/null 2>&1 \
	      || echo "warning: apt-get could not install $(2); $(3)"; \
	  else \
	    echo "note: no$$missing, and no root apt-get: $(3)"; \
	  fi; \
	fi
endef

# Azurite, Microsoft's Azure Storage emulator, for the az:// tests: from the npm registry
# into .node/ (git-ignored), pinned. Without npm, or if the install fails, those tests skip
# and say why: the run goes on.
AZURITE_VERSION := 3.37.0
AZURITE := .node/node_modules/.bin/azurite-blob
azurite:
	@[ -x $(AZURITE) ] || { command -v npm >/dev/null 2>&1 \
	  && npm install --silent --no-audit --no-fund --prefix .node azurite@$(AZURITE_VERSION) >/dev/null 2>&1; } \
	  || echo "note: npm could not install azurite into .node; the Azure Blob Storage tests will skip"

# Two worker processes: the suite mostly waits on daemons, Ray and emulators, so two halve
# its time on two cores; --dist loadfile keeps each test module (and the daemon its module
# fixture starts) in one worker.
test: lint browser azurite
	$(PY) -m pytest -n 2 --dist loadfile

# Benchmarks (not part of the tests): `make bench-install`, then one command each, e.g.
# .venv/bin/python bench/throughput.py (see docs/benchmarks.md).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

# bench/peers.py compares modelwatch with other model servers: each of those is installed
# into a venv of its own (bench/.venvs/<peer>, from bench/peer_servers/<peer>/requirements.txt;
# rebuilt only when that file changes), so their pins do not fight ours. A peer that cannot
# be installed is reported by the run with the reason. The load generators come from
# Debian: hey (HTTP) and nghttp2-client's h2load (gRPC), installed as root when missing.
H2LOAD ?= /usr/bin/h2load
HEY ?= /usr/bin/hey
bench-install: $(BENCH_STAMP) load-generators
	$(PY) bench/peers.py --install

load-generators:
	$(call apt-install,$(HEY) $(H2LOAD),hey nghttp2-client,install them for the benchmarks)

clean:
	rm -rf $(VENV) .modelwatch models .pytest_cache .hypothesis bench/.venvs .node
