#!/usr/bin/env bash
# `make test`: the whole suite on the default interpreter (Python 3.11, Django 5.2 LTS), its
# servers on the default transport (`serve --transport asgi`); then tiers 1 and 2 plus the
# end-to-end tier (less its slowest Django- and transport-independent tests) on Django 6.x under
# the newest Python that has it (Django 6 needs Python >= 3.12), its servers on the native
# transport (`serve --transport native`). Without such an interpreter, the second pass is the
# end-to-end tier on the native transport, on the default interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== Python $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'), Django $(.venv/bin/python -c 'import django; print(django.get_version())')"
.venv/bin/python -m pytest -q --durations=15 "$@"

newer=""
# pyenv's shims exist for every version it knows but fail unless that version is selected, so
# an interpreter counts only if it actually runs.
for candidate in "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python3 "$HOME"/.pyenv/versions/3.12*/bin/python3 python3.13 python3.12; do
    if "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
        newer="$candidate"
        break
    fi
done
# What the second pass leaves out: the ASGI-server matrix (the native transport is serve's),
# the backends' conformance suite and their fault tests (Sentinel failovers, PostgreSQL
# restarts, two machines): they depend on neither Django's version nor the transport.
second_pass=(-m "not browser" --durations=15
    --ignore=tests/e2e/test_asgi_servers.py --ignore=tests/backends
    --ignore=tests/e2e/test_redis_sentinel.py --ignore=tests/e2e/test_redis_cluster.py
    --ignore=tests/e2e/test_postgres_scaleout.py --ignore=tests/e2e/test_two_machines.py)
export MEGAPHONE_TEST_TRANSPORT=native
if [ -z "$newer" ]; then
    echo "== no Python >= 3.12 here: Django 6 is not tested on this machine"
    echo "== the end-to-end tier on the native transport"
    .venv/bin/python -m pytest -q "${second_pass[@]}" tests/e2e tests/security "$@"
    exit 0
fi
venv=.venv-django6
if [ ! -f "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
    "$newer" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e '.[redis,postgres,test]' 'Django>=6,<7'
    touch "$venv/.installed"
fi
echo "== Python $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])'), Django $("$venv/bin/python" -c 'import django; print(django.get_version())'), native transport"
"$venv/bin/python" -m pytest -q "${second_pass[@]}" "$@"
