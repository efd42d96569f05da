#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run the whole suite on both cores.
# SLURM daemons (slurm-wlm, munge) come from Debian's packages when this runs as root; without them the
# SLURM cluster tests skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v slurmctld >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
    || echo "warning: could not install slurm-wlm/munge; the SLURM cluster tests will skip"
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e '.[dev]'
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -n 2 --durations=25 -p no:cacheprovider tests "$@"
