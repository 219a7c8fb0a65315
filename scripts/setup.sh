#!/usr/bin/env bash
# Installs what the project needs on a fresh machine: uv (from PyPI) and the locked environment in .venv,
# and the locked packages of the TypeScript tenant client in examples/ (from npm, cached once warm).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v uv >/dev/null 2>&1; then
    UV=(uv)
else
    python3 -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
    UV=(python3 -m uv)
fi
# Bytecode compiled once here: where PYTHONDONTWRITEBYTECODE is set (as on this project's machines) Python
# never writes it, and every process the tests start would compile its imports from source again (a
# service's start took 7 s of CPU instead of 3.5).
"${UV[@]}" sync --frozen --quiet --compile-bytecode
.venv/bin/python -m compileall -q contracts services sovereign bench tests >/dev/null
npm ci --prefix examples/typescript-client --no-audit --no-fund --prefer-offline --silent
