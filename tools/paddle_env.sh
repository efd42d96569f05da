#!/usr/bin/env bash
# Make .venv-paddle: PaddlePaddle (CPU wheel) in its own environment. The main environment (.venv, with
# torch and this package) is made visible through a .pth file, so the Paddle tests can compare against
# the PyTorch model without installing torch twice. Idempotent; prints the seconds it took.
#   bash tools/paddle_env.sh            # then: .venv-paddle/bin/python -m dacdetr.paddle.main --help
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
PY=${PYTHON:-python3}
MAIN_PY=${MAIN_PY:-.venv/bin/python}
[ -x "$MAIN_PY" ] || { echo "error: $MAIN_PY not found: make the main environment first (tools/run_tests.sh or pip install -e '.[dev]')" >&2; exit 2; }
[ -x .venv-paddle/bin/python ] || "$PY" -m venv .venv-paddle
if ! .venv-paddle/bin/python -c "import paddle" 2>/dev/null; then
  .venv-paddle/bin/python -m pip install -q "paddlepaddle==3.3.1"
fi
main_site=$("$MAIN_PY" -c "import site; print(site.getsitepackages()[0])")
paddle_site=$(.venv-paddle/bin/python -c "import site; print(site.getsitepackages()[0])")
echo "$(cd "$main_site" && pwd)" > "$paddle_site/layerzoo_main_venv.pth"
.venv-paddle/bin/python -c "import paddle, torch, dacdetr; print('paddle', paddle.__version__, '+ torch', torch.__version__)"
echo "paddle environment ready in $(( $(date +%s) - start )) s"
