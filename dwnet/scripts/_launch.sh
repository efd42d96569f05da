# Shared body of the run_<config>.sh scripts (sourced, not run). The calling script sets CONFIG and its
# defaults (DEFAULT_NNODES, DEFAULT_BATCH, DEFAULT_ACCUM, DEFAULT_AMP); everything below can be overridden
# from the environment:
#
#   DATA_PATH       ImageNet root (train/ and val/ class folders, or train.zip + train_map.txt ... with --zip)
#   OUTPUT          run folder root                     (default: output/$CONFIG)
#   MODE            train | eval                        (default: train; eval needs RESUME=<checkpoint>)
#   RESUME          checkpoint to evaluate (MODE=eval) or to resume training from
#   LAUNCHER        torchrun | launch                   (default: torchrun = python -m torch.distributed.run;
#                                                        launch = python -m torch.distributed.launch, as officially)
#   NPROC_PER_NODE  processes per node                  (default: 8; eval: 1)
#   NNODES          nodes                               (default: the script's)
#   NODE_RANK       this node's rank                    (default: $OMPI_COMM_WORLD_RANK, else 0)
#   MASTER_ADDR     address of node 0                   (default: $MASTER_IP, else 127.0.0.1)
#   MASTER_PORT     (default: 12345)
#   BATCH_SIZE, ACCUM_STEPS, AMP_OPT_LEVEL              (default: the script's; ACCUM_STEPS=0 leaves it out)
#   PYTHON          (default: python)
#   DRY_RUN=1       print the command instead of running it
#
# Arguments given to the script are passed on to dwnet/main.py (e.g. --zip, --tag, --opts KEY VALUE ...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA_PATH="${DATA_PATH:-/path/to/imagenet}"
OUTPUT="${OUTPUT:-output/${CONFIG}}"
MODE="${MODE:-train}"
RESUME="${RESUME:-}"
LAUNCHER="${LAUNCHER:-torchrun}"
NNODES="${NNODES:-${DEFAULT_NNODES}}"
NODE_RANK="${NODE_RANK:-${OMPI_COMM_WORLD_RANK:-0}}"
MASTER_ADDR="${MASTER_ADDR:-${MASTER_IP:-127.0.0.1}}"
MASTER_PORT="${MASTER_PORT:-12345}"
BATCH_SIZE="${BATCH_SIZE:-${DEFAULT_BATCH}}"
ACCUM_STEPS="${ACCUM_STEPS:-${DEFAULT_ACCUM}}"
AMP_OPT_LEVEL="${AMP_OPT_LEVEL:-${DEFAULT_AMP}}"
PYTHON="${PYTHON:-python}"

case "$LAUNCHER" in
    torchrun) launcher=("$PYTHON" -m torch.distributed.run) ;;
    launch) launcher=("$PYTHON" -m torch.distributed.launch) ;;
    *) echo "error: LAUNCHER must be torchrun or launch, got '$LAUNCHER'" >&2; exit 2 ;;
esac

args=(--cfg "$ROOT/dwnet/configs/${CONFIG}.yaml" --data-path "$DATA_PATH")
case "$MODE" in
    train)
        NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
        launcher+=(--nproc_per_node "$NPROC_PER_NODE" --nnodes "$NNODES" --node_rank "$NODE_RANK"
                   --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
        args+=(--output "$OUTPUT" --data-set IMNET --batch-size "$BATCH_SIZE")
        if [ "$ACCUM_STEPS" != "0" ]; then args+=(--accumulation-steps "$ACCUM_STEPS"); fi
        args+=(--amp-opt-level "$AMP_OPT_LEVEL")
        if [ -n "$RESUME" ]; then args+=(--resume "$RESUME"); fi
        ;;
    eval)  # the official README's evaluation command
        if [ -z "$RESUME" ]; then
            echo "error: MODE=eval evaluates a checkpoint: set RESUME=/path/to/${CONFIG%_patch4_window7_224}_224.pth" >&2
            exit 2
        fi
        NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
        launcher+=(--nproc_per_node "$NPROC_PER_NODE" --master_port "$MASTER_PORT")
        args+=(--resume "$RESUME" --eval)
        ;;
    *) echo "error: MODE must be train or eval, got '$MODE'" >&2; exit 2 ;;
esac

cmd=("${launcher[@]}" "$ROOT/dwnet/main.py" "${args[@]}" "$@")
if [ -n "${NCCL_SOCKET_IFNAME:-}" ]; then export NCCL_SOCKET_IFNAME; fi
export MKL_THREADING_LAYER="${MKL_THREADING_LAYER:-GNU}"
if [ "${DRY_RUN:-0}" != "0" ]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
echo "NODE_RANK: $NODE_RANK  NPROC_PER_NODE: $NPROC_PER_NODE  NNODES: $NNODES" >&2
exec "${cmd[@]}"
