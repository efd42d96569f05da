#!/usr/bin/env bash
# One GPU session (< 8 minutes on one H100/H200): the CUDA-only tests, the deformable-attention check and
# timing sweep, the throughput table of every model in the speed targets (fp32, bf16 + channels_last,
# compiled) with peak memory, and one report (report.md + report.json) under $OUT (default ./gpu_report).
#
#   bash benchmarks/gpu_check.sh                # the real run (needs CUDA)
#   bash benchmarks/gpu_check.sh --dry-run      # CPU smoke run: every step at a toy size, same report
#   OUT=/tmp/r PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# Every step runs under its own time limit; a failing or timed-out step is recorded in the report
# (status, exit code, seconds, log tail) and the script goes on. The exit status is 0 when every step passed,
# 1 otherwise. Steps can be skipped with SKIP="tests msda throughput" (space separated step groups); BUDGET
# (default 470 s) caps the steps' total time.
set -u

DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run|--cpu-smoke) DRY=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-./gpu_report}"
PYTHON="${PYTHON:-python}"
SKIP="${SKIP:-}"
BUDGET="${BUDGET:-470}"  # seconds for all steps together: a step never runs past it (the rest are skipped)
mkdir -p "$OUT/logs" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
STEPS="$OUT/steps.tsv"
: > "$STEPS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$ROOT" || exit 2
T0=$SECONDS

# run_step NAME GROUP LIMIT_SECONDS command...: log to $OUT/logs/NAME.log, one line in steps.tsv
run_step() {
    local name="$1" group="$2" limit="$3"
    shift 3
    local log="$OUT/logs/$name.log"
    if [[ " $SKIP " == *" $group "* ]]; then
        printf '%s\t%s\tskipped\t-\t0\t%s\n' "$name" "$group" "$*" >> "$STEPS"
        return 0
    fi
    local left=$((BUDGET - (SECONDS - T0)))
    if [ "$left" -lt 20 ]; then
        printf '%s\t%s\tskipped (time budget)\t-\t0\t%s\n' "$name" "$group" "$*" >> "$STEPS"
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name ($group, limit ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    rc=$?
    local dt=$((SECONDS - t0)) status=passed
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; elif [ "$rc" -ne 0 ]; then status=failed; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$group" "$status" "$rc" "$dt" "$*" >> "$STEPS"
    echo "   -> $status (rc $rc, ${dt}s)"
    tail -n 3 "$log" | sed 's/^/      /'
}

run_step environment env 60 "$PYTHON" benchmarks/gpu_report.py environment --out "$OUT"

if [ "$DRY" -eq 1 ]; then
    # the same steps at toy sizes on the CPU: checks the script, the CLIs and the report, not the speed
    run_step tests_gpu tests 300 "$PYTHON" -m pytest -q -x -p no:cacheprovider -m gpu \
        tests/test_dacdetr_msda.py --junitxml "$OUT/logs/tests_gpu.xml"
    run_step msda msda 300 "$PYTHON" benchmarks/msda.py --warmup 1 --iters 2
    run_step throughput_fp32 throughput 300 "$PYTHON" benchmarks/throughput.py --device cpu --threads 1 \
        --models dianet:dia_resnet164 --batch 2 --img-size 32 --steps 1 --warmup 1 --no-baseline \
        --precisions fp32 --json "$OUT/throughput_fp32.json"
else
    # 1. CUDA-only tests: the gpu marker, and every CUDA-gated test of the deformable-attention files
    run_step tests_gpu tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests \
        --junitxml "$OUT/logs/tests_gpu.xml"
    run_step tests_cuda tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider -rs -k "cuda or gpu or triton" \
        tests/test_dacdetr_msda.py tests/test_dacdetr_model.py tests/test_dacdetr_losses.py \
        --junitxml "$OUT/logs/tests_cuda.xml"
    # 2. deformable attention: errors vs the float64 reference, timings vs the official op, launch sweep
    run_step msda msda 60 "$PYTHON" benchmarks/msda.py --check --sweep --warmup 5 --iters 20
    run_step msda_bf16 msda 30 "$PYTHON" benchmarks/msda.py --check --dtype bfloat16 --cases encoder_b2 \
        --warmup 5 --iters 20
    # 3. throughput (train / eval img/s, peak memory; ratios vs the baseline and the official anchors)
    TP=("$PYTHON" benchmarks/throughput.py --device cuda --steps 20 --warmup 5 --in-process)
    run_step tp_imagenet64 throughput 60 "${TP[@]}" --models dla:resnet50_dla_l rlanet:rla_resnet50 \
        --batch 64 --img-size 224 --json "$OUT/tp_imagenet64.json"
    run_step tp_imagenet128 throughput 75 "${TP[@]}" --models rlanet:rla_mobilenetv2 dwnet:dwnet_tiny \
        torchvision:mobilenet_v2 timm:swin_tiny_patch4_window7_224 --batch 128 --img-size 224 \
        --json "$OUT/tp_imagenet128.json"
    run_step tp_cifar throughput 60 "${TP[@]}" --models dianet:dia_resnet164 dla:dla_b110 dla:dla_l110 \
        --batch 128 --img-size 32 --json "$OUT/tp_cifar.json"
    # compiled (bf16 + channels_last): the ImageNet models and the launch-bound CIFAR models
    run_step tp_compiled_imagenet throughput 90 "${TP[@]}" --compile --precisions bf16 \
        --models dla:resnet50_dla_l rlanet:rla_resnet50 --batch 64 --img-size 224 --no-baseline \
        --json "$OUT/tp_compiled_imagenet.json"
    run_step tp_compiled_cifar throughput 90 "${TP[@]}" --compile --precisions fp32 bf16 \
        --models dianet:dia_resnet164 dla:dla_l110 --batch 128 --img-size 32 --no-baseline \
        --json "$OUT/tp_compiled_cifar.json"
fi

"$PYTHON" benchmarks/gpu_report.py report --out "$OUT" --steps "$STEPS" --seconds $((SECONDS - T0)) \
    --mode "$([ "$DRY" -eq 1 ] && echo dry-run || echo gpu)"
rc=$?
echo "report: $OUT/report.md, $OUT/report.json ($((SECONDS - T0)) s)"
exit $rc
