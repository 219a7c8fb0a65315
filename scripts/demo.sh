#!/usr/bin/env bash
# Sets everything up, then runs the whole marketplace on the embedded defaults and prints a report
# (with --slurm, one site's factory on a local Slurm cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The Slurm mode runs one site's jobs on a local Slurm cluster: Debian's Slurm, installed once.
for argument in "$@"; do
    if [ "$argument" = "--slurm" ]; then
        scripts/setup-slurm.sh
    fi
done
exec .venv/bin/sovereign demo "$@"
