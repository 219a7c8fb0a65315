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
"${UV[@]}" sync --frozen --quiet
npm ci --prefix examples/typescript-client --no-audit --no-fund --prefer-offline --silent
