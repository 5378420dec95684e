# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
SEEDS ?= seeds
INDEX ?= index
HOST ?= 127.0.0.1
PORT ?= 7860
APT_PACKAGES := chromium fonts-noto-cjk

.PHONY: run test setup sysdeps index clean

run: setup
	$(VENV)/bin/rag index --seeds $(SEEDS) --index $(INDEX) --if-stale
	$(VENV)/bin/rag serve --host $(HOST) --port $(PORT)

test: setup sysdeps
	$(PY) -m pytest -q

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, with the local CPU pin: an unpinned torch would pull gigabytes of CUDA packages
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,llm]'
	touch $(STAMP)

# Debian packages the browser tests need: Chromium, and CJK fonts so Chinese does not render as boxes
sysdeps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

index: setup
	$(VENV)/bin/rag index --seeds $(SEEDS) --index $(INDEX)

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache
	find $(INDEX) -mindepth 1 ! -name README.md -exec rm -rf {} +
