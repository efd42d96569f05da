#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run the whole suite on both cores; then the OpenMMLab
# tests (tests_mm/) in .venv-mm (tools/mm_env.sh).
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
status=0
.venv/bin/python -m pytest -n 2 --durations=25 -p no:cacheprovider tests "$@" || status=$?
# The OpenMMLab tests (mmdetection 3 / mmsegmentation 1 plugins, configs, training runs) in their own environment,
# .venv-mm over .venv (tools/mm_env.sh); LAYERZOO_SKIP_MM=1 leaves them out.
if [ "${LAYERZOO_SKIP_MM:-0}" != 1 ]; then
  if bash tools/mm_env.sh; then
    .venv-mm/bin/python -m pytest -n 2 --durations=10 -p no:cacheprovider tests_mm || status=$?
  else
    status=1
  fi
fi
# the PaddlePaddle port: its own environment (tools/paddle_env.sh) and test folder; LAYERZOO_SKIP_PADDLE=1 skips
if [ "${LAYERZOO_SKIP_PADDLE:-0}" != 1 ]; then
  bash tools/paddle_env.sh && .venv-paddle/bin/python -m pytest -n 2 --durations=10 -p no:cacheprovider tests_paddle \
    || status=$?
fi
exit $status
