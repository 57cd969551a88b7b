# tap-emulator: `make run` starts an emulated Tap, `make test` runs the whole suite.
# Both create (or reuse) the virtual environment in .venv and install the project into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_DIR := tests/interop/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
LWM2M_DIR := tests/interop/lwm2m
LWM2M_STAMP := $(LWM2M_DIR)/node_modules/.installed
RUN_ARGS ?=

.PHONY: run test lint bench install node system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev,postgres]'
	touch $(STAMP)

install: $(STAMP)

# The real Tap SDK (npm @iotize/tap) that the interop tests drive.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund
	touch $(NODE_STAMP)

# A real LwM2M server (lwm2m-node-lib) and an independent LwM2M codec for the LwM2M interop tests.
$(LWM2M_STAMP): $(LWM2M_DIR)/package.json $(LWM2M_DIR)/package-lock.json
	npm ci --prefix $(LWM2M_DIR) --no-audit --no-fund
	touch $(LWM2M_STAMP)

node: $(NODE_STAMP) $(LWM2M_STAMP)

# libcoap's command-line client for the CoAP interop tests (Debian package libcoap3-bin), and Debian's
# Chromium for the live page's browser test (Playwright drives /usr/bin/chromium).
system-deps:
	@command -v coap-client-notls >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcoap3-bin; \
	  else \
	    echo "note: coap-client-notls not found; install libcoap3-bin to run the libcoap interop tests"; \
	  fi; }
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "note: chromium not found; install it to run the live page's browser test"; \
	  fi; }

run: install
	$(VENV)/bin/tap-emulator serve $(RUN_ARGS)

test: install node system-deps
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check tap_emulator tests bench
	$(VENV)/bin/ruff format --check tap_emulator tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
