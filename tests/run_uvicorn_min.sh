#!/usr/bin/env bash
# The tests of Megaphone's uvicorn protocols (the contract, the protocol units, `serve`,
# `runserver`, the e2e tier under `serve` and plain uvicorn) on the OLDEST uvicorn that
# pyproject.toml allows; `make test` runs the newest. About two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

oldest=$(sed -n 's/.*"uvicorn\[standard\]>=\([0-9.]*\).*/\1/p' pyproject.toml)
venv=.venv-uvicorn-min
if [ ! -f "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e '.[redis,test]' "uvicorn[standard]==$oldest"
    touch "$venv/.installed"
fi
echo "== uvicorn $("$venv/bin/python" -c 'import uvicorn; print(uvicorn.__version__)') (the oldest allowed)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/unit/test_uvicorn_contract.py tests/unit/test_uvicorn_protocol.py tests/e2e/test_native.py \
    tests/e2e/test_uvicorn_write_frame.py tests/e2e/test_broadcast.py \
    tests/e2e/test_asgi_servers.py tests/e2e/test_runserver.py \
    -k "not daphne and not hypercorn and not granian" "$@"
