#!/usr/bin/env bash
# Create .venv-mm: an OpenMMLab environment (mmengine, mmdet 3, mmsegmentation 1, mmcv-lite) layered over the
# main .venv. A .pth file adds the main environment's site-packages, so torch, torchvision, timm and layerzoo
# itself are shared instead of installed a second time; only the OpenMMLab packages land in .venv-mm.
#
#   bash tools/mm_env.sh                 # creates/updates .venv-mm next to .venv
#   MAIN_VENV=/path/to/venv MM_VENV=/path/to/venv-mm bash tools/mm_env.sh
#
# mmcv-lite is mmcv without its compiled ops: enough for building configs and models and for the tests
# (which stand in for the few compiled ops they touch, see tests_mm/_mmcv_ext_standin.py). For real training
# install the full mmcv 2.1.0 instead (`pip install mmcv==2.1.0`, or `mim install mmcv==2.1.0`).
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_VENV=${MAIN_VENV:-.venv}
MM_VENV=${MM_VENV:-.venv-mm}
[ -x "$MAIN_VENV/bin/python" ] || { echo "error: $MAIN_VENV/bin/python not found; run 'bash tools/run_tests.sh' or create $MAIN_VENV first" >&2; exit 2; }
MAIN_SITE=$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
MAIN_SITE=$(cd "$MAIN_SITE" && pwd -P)
[ -x "$MM_VENV/bin/python" ] || "$MAIN_VENV/bin/python" -m venv "$MM_VENV"
MM_SITE=$("$MM_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# site.addsitedir (rather than a bare path line) also runs the main environment's own .pth files,
# e.g. the editable-install hook of layerzoo.
echo "import site; site.addsitedir('$MAIN_SITE')" > "$MM_SITE/layerzoo_main_venv.pth"
"$MM_VENV/bin/python" -c 'import torch' || { echo "error: torch is not importable through $MAIN_SITE" >&2; exit 2; }
# The pins of the [mmdet] extra, with mmcv-lite in place of the compiled mmcv.
"$MM_VENV/bin/python" -m pip install -q mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 mmcv-lite==2.1.0 ftfy regex
# Nothing the main environment provides may have been installed a second time.
"$MM_VENV/bin/python" - "$MM_SITE" <<'PY'
import importlib.metadata as md, sys, pathlib
site = pathlib.Path(sys.argv[1]).resolve()
for name in ("torch", "torchvision", "timm", "numpy"):
    dist = md.distribution(name)
    where = pathlib.Path(dist.locate_file("")).resolve()
    if where == site:
        sys.exit(f"error: {name} was installed a second time into {site}")
print("mm env ready:", " ".join(f"{n}=={md.version(n)}" for n in ("torch", "mmengine", "mmcv-lite", "mmdet", "mmsegmentation")))
PY
