# Megaphone: the only two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
PORT ?= 8000
WORKERS ?= 1
HOST ?= 127.0.0.1
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MANAGE := $(PY) example/manage.py

# The modules typings/channels/ types (checked against Channels' own code by `make lint`).
CHANNELS_STUBS := channels.auth channels.consumer channels.db channels.exceptions channels.layers \
	channels.routing channels.generic.websocket channels.testing.application channels.testing.websocket

AUTOBAHN_VENV := .venv-autobahn
AUTOBAHN_STAMP := $(AUTOBAHN_VENV)/.installed

.PHONY: run test test-fast lint bench bench-quick bench-100k bench-sse soak autobahn autobahn-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[redis,postgres,test]'
	touch $(STAMP)

# BACKEND=<url> (memory://, redis://..., postgres://...) selects the backend for this run.
run: $(STAMP)
	$(if $(BACKEND),MEGAPHONE_BACKEND='$(BACKEND)') $(MANAGE) migrate --noinput -v 0
	$(if $(BACKEND),MEGAPHONE_BACKEND='$(BACKEND)') $(MANAGE) serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: $(STAMP)
	bash tests/run_all.sh

test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e and not browser" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests example bench typings
	$(VENV)/bin/ruff format --check src tests example bench typings
	$(VENV)/bin/mypy
	DJANGO_SETTINGS_MODULE=tests.mypy_settings $(PY) -m mypy.stubtest --ignore-missing-stub \
		--mypy-config-file typings/stubtest.ini $(CHANNELS_STUBS)

bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/sse.py

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

# 100,000 connections per server (bench/hundred_k.py); ARGS=--quick for a 30 s smoke run.
bench-100k: $(STAMP)
	$(PY) bench/hundred_k.py $(ARGS)

bench-sse: $(STAMP)
	$(PY) bench/sse.py

soak: $(STAMP)
	$(PY) bench/soak.py

# Autobahn|Testsuite against `manage.py serve` (bench/autobahn.py); its runner has its own venv.
$(AUTOBAHN_STAMP): bench/autobahn-requirements.txt
	test -x $(AUTOBAHN_VENV)/bin/python || $(PYTHON) -m venv $(AUTOBAHN_VENV)
	$(AUTOBAHN_VENV)/bin/python -m pip install -q -r bench/autobahn-requirements.txt
	touch $(AUTOBAHN_STAMP)

# Both transports of `manage.py serve` (--transport asgi, then native).
autobahn: $(STAMP) $(AUTOBAHN_STAMP)
	$(PY) bench/autobahn.py
	$(PY) bench/autobahn.py --transport native

autobahn-quick: $(STAMP) $(AUTOBAHN_STAMP)
	$(PY) bench/autobahn.py --quick
	$(PY) bench/autobahn.py --quick --transport native

clean:
	rm -rf $(VENV) .venv-* example/db.sqlite3
