# Megaphone: the only two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
PORT ?= 8000
WORKERS ?= 1
HOST ?= 127.0.0.1
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MANAGE := $(PY) example/manage.py

.PHONY: run test test-fast lint bench bench-quick soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[redis,test]'
	touch $(STAMP)

run: $(STAMP)
	$(MANAGE) migrate --noinput -v 0
	$(MANAGE) serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

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

clean:
	rm -rf $(VENV) .venv-* example/db.sqlite3
