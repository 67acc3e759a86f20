# MeterWatch developer entry points. `make run` and `make test` work on a fresh machine (as root).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config.yaml
# Debian packages the test suite starts as real servers (see tests/support/servers.py), and
# systemd for `systemd-analyze verify` of deploy/meterwatch.service.
DEB_TEST_PACKAGES := mosquitto influxdb prometheus-alertmanager victoria-metrics chromium openssl systemd
DEB_TEST_BINARIES := /usr/sbin/mosquitto /usr/bin/influxd /usr/bin/prometheus-alertmanager /usr/bin/victoria-metrics /usr/bin/chromium /usr/bin/openssl /usr/bin/systemd-analyze

.PHONY: run reset-demo test lint bench venv deb-test-packages real-data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@# An editable install leaves the package's own modules uncompiled, and with
	@# PYTHONDONTWRITEBYTECODE set every command would compile them again (0.15-0.2 s each).
	$(PY) -m compileall -q meterwatch meterwatch/*/ >/dev/null
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The Flux checker of docs/queries.md (tests/integration/test_flux_queries.py): the Flux language
# server from npm, pinned in its package-lock.json; needs Node.js (nodejs, with npm).
FLUX_CHECK := tools/flux-check
$(FLUX_CHECK)/node_modules/.installed: $(FLUX_CHECK)/package.json $(FLUX_CHECK)/package-lock.json
	@command -v npm >/dev/null || { echo "installing Debian packages: nodejs npm"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	npm ci --prefix $(FLUX_CHECK) --no-audit --no-fund --silent
	touch $@

## run: create the venv, install, run the service on $(CONFIG) (DURATION=seconds to stop by itself)
run: $(VENV)/.installed
	$(VENV)/bin/meterwatch run --config $(CONFIG) $(if $(DURATION),--duration $(DURATION),)

## reset-demo: clear the demo's state under var/ (store, alerts, previous runs); keeps the venv
reset-demo:
	rm -rf var

## deb-test-packages: install the Debian servers the tests start, when missing
deb-test-packages:
	@missing=""; for b in $(DEB_TEST_BINARIES); do [ -x $$b ] || missing=yes; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $(DEB_TEST_PACKAGES)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $(DEB_TEST_PACKAGES) >/dev/null; \
	fi

## test: install test extras and Debian servers, then run pytest
test: $(VENV)/.installed-test deb-test-packages $(FLUX_CHECK)/node_modules/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: ruff and mypy, as CI would
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## bench: run the benchmarks and update docs/benchmarks.md
bench: $(VENV)/.installed-test deb-test-packages
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m bench

## real-data: the public household data set (docs/evaluation.md "Real data") as canonical files
real-data: $(VENV)/.installed
	$(VENV)/bin/meterwatch simulate --from-real uci-household --out var/real/uci-household --format parquet

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache $(FLUX_CHECK)/node_modules
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
