#!/usr/bin/env bash
# Usage: [GPUS_PER_NODE=8] [MASTER_ADDR=..] [MASTER_PORT=..] [NODE_RANK=..] run_dist_launch.sh GPUS CMD [ARGS...]
# Starts CMD (a config .sh or any program) once per local GPU through torchrun, which exports
# RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT for dacdetr.main to pick up.
# GPUS_PER_NODE defaults to min(GPUS, 8); the number of nodes is GPUS / GPUS_PER_NODE.
set -x

GPUS=$1
RUN_COMMAND=${@:2}
if [ "$GPUS" -lt 8 ]; then
    GPUS_PER_NODE=${GPUS_PER_NODE:-$GPUS}
else
    GPUS_PER_NODE=${GPUS_PER_NODE:-8}
fi
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
MASTER_PORT=${MASTER_PORT:-"29500"}
NODE_RANK=${NODE_RANK:-0}

let "NNODES=GPUS/GPUS_PER_NODE"

${TORCHRUN:-torchrun} \
    --nnodes ${NNODES} \
    --node_rank ${NODE_RANK} \
    --master_addr ${MASTER_ADDR} \
    --master_port ${MASTER_PORT} \
    --nproc_per_node ${GPUS_PER_NODE} \
    --no-python \
    ${RUN_COMMAND}
