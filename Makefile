# The two commands: `make demo` and `make test`. Both set up everything they need on a fresh Debian machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test check lint tools venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@python3 -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed; installing Debian's python3-venv"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && python3 -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages; the status page's
# browser test drives Debian's chromium through Playwright (which never downloads a browser of its own);
# kubectl (kubernetes-client) renders the kustomizations and openssl makes the TLS tests' certificates;
# buildah builds and runs the container image on a Debian base that mmdebstrap makes (no engine, no registry).
tools:
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null || ! command -v chromium >/dev/null \
	    || ! command -v kubectl >/dev/null || ! command -v openssl >/dev/null \
	    || ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y prometheus prometheus-alertmanager chromium \
	    openssl buildah mmdebstrap $$(command -v kubectl >/dev/null || echo kubernetes-client); \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: venv tools lint
	$(VENV)/bin/pytest

# The fast loop while changing code: everything but the tests marked slow (see pyproject.toml), four at a time
# (most of their time is spent waiting on sockets, so four workers fit two cores).
check: venv tools lint
	$(VENV)/bin/pytest -m "not slow" -q -n 4

demo: venv
	$(PY) -m exporter demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
