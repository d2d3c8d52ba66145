# Megaphone: the only two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
PORT ?= 8000
WORKERS ?= 1
HOST ?= 127.0.0.1
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MANAGE := $(PY) example/manage.py

AUTOBAHN_VENV := .venv-autobahn
AUTOBAHN_STAMP := $(AUTOBAHN_VENV)/.installed

.PHONY: run test test-fast lint bench bench-quick soak autobahn autobahn-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[redis,test]'
	touch $(STAMP)

run: $(STAMP)
	$(MANAGE) migrate --noinput -v 0
	$(if $(BACKEND),MEGAPHONE_BACKEND='$(BACKEND)') $(MANAGE) serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: $(STAMP)
	bash tests/run_all.sh

test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e and not browser" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests example bench
	$(VENV)/bin/ruff format --check src tests example bench

bench: $(STAMP)
	$(PY) bench/run.py

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

soak: $(STAMP)
	$(PY) bench/soak.py

# Autobahn|Testsuite against `manage.py serve` (bench/autobahn.py); its runner has its own venv.
$(AUTOBAHN_STAMP): bench/autobahn-requirements.txt
	test -x $(AUTOBAHN_VENV)/bin/python || $(PYTHON) -m venv $(AUTOBAHN_VENV)
	$(AUTOBAHN_VENV)/bin/python -m pip install -q -r bench/autobahn-requirements.txt
	touch $(AUTOBAHN_STAMP)

autobahn: $(STAMP) $(AUTOBAHN_STAMP)
	$(PY) bench/autobahn.py

autobahn-quick: $(STAMP) $(AUTOBAHN_STAMP)
	$(PY) bench/autobahn.py --quick

clean:
	rm -rf $(VENV) .venv-* example/db.sqlite3
