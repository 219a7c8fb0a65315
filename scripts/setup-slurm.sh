#!/usr/bin/env bash
# Installs Slurm 22.05 with accounting (slurmdbd on MariaDB) and munge from Debian, once, as root or
# through sudo. No service is started for them: the suite and the demo's Slurm mode start their own daemons
# in a fresh directory (sovereign/stack/slurm.py). Needs the Python environment (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# The package list is written once, in sovereign/stack/slurm.py.
read -r -a SLURM_PACKAGES <<< "$(.venv/bin/python -c 'from sovereign.stack.slurm import DEBIAN_PACKAGES; print(*DEBIAN_PACKAGES)')"
INSTALLED="$(dpkg-query -W -f='${db:Status-Status}\n' "${SLURM_PACKAGES[@]}" 2>/dev/null | grep -cx installed || true)"
if [ "$INSTALLED" -ne "${#SLURM_PACKAGES[@]}" ]; then
    echo "setup: ${SLURM_PACKAGES[*]} from Debian" >&2
    SUDO=()
    [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${SLURM_PACKAGES[@]}" >&2
fi
