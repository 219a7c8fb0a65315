#!/bin/sh
# A site's launch script for one marketplace job, as the test cluster and the demo's Slurm mode run it:
# it runs for the job's scaled length (SOVEREIGN_RUN_SECONDS) and fails with the exit code written in
# $SOVEREIGN_FAIL_DIR/<job id> when that file exists. In production it would start the tenant's container.
set -eu
sleep "${SOVEREIGN_RUN_SECONDS:-1}"
marker="${SOVEREIGN_FAIL_DIR:-/nonexistent}/${SOVEREIGN_JOB_ID:-none}"
if [ -f "$marker" ]; then
    exit "$(cat "$marker")"
fi
