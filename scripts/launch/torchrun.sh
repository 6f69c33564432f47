#!/usr/bin/env bash
# Pre-train or fine-tune with torchrun, on one node or many (run this once on every node).
#
#   DATASET=k400 GRID=196 DATA_ROOT=/data/k400 scripts/launch/torchrun.sh pretrain
#   DATASET=ssv2 GRID=324 DATA_ROOT=/data/ssv2 scripts/launch/torchrun.sh finetune --batch_size 4
#   # two nodes: on node 0 and node 1, the same command with NODE_RANK=0 / NODE_RANK=1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.example MASTER_PORT=29500 DATASET=k400 DATA_ROOT=/data/k400 \
#     scripts/launch/torchrun.sh pretrain
#
# First argument: pretrain or finetune; any further arguments are passed on to the entry script and
# override the flags below. Re-running the same command resumes from the newest checkpoint.
#
# Environment (defaults in brackets):
#   DATASET          k400, ssv2, ucf101 or hmdb51 (required); its paths and recipe: scripts/datasets/DATASET.sh
#   DATA_ROOT        the dataset folder (required); see scripts/datasets/DATASET.sh for the other paths
#   GRID             patches per frame: 196 (224 px / 16) or 324 (288 px / 16) [196]
#   SIZE             model size: micro, tiny, small, base, large, huge [base]
#   BATCH_SIZE       clips per GPU per step, before NUM_SAMPLE [32 pre-training, 8 fine-tuning]
#   NUM_SAMPLE       clips cut from each decoded video [2]
#   NUM_WORKERS      data loader workers per GPU [8]
#   PRETRAIN_DIR     pre-training output [output/DATASET_SIZE_GRID_pretrain]
#   FINETUNE_DIR     fine-tuning output [output/DATASET_SIZE_GRID_finetune]
#   FINETUNE_FROM    checkpoint to fine-tune [the last epoch checkpoint in PRETRAIN_DIR]
#   SAVE_EVERY_STEPS checkpoint-latest every so many steps inside an epoch [1000]
#   KEEP_CKPTS       epoch checkpoints kept [3]
#   DEEPSPEED        set to 1 for --enable_deepspeed, with ZERO_STAGE [1]
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   the torchrun rendezvous [1, 0, 127.0.0.1, 29500]
#   GPUS_PER_NODE    processes per node [the GPUs nvidia-smi lists, else 1]
#   DRY_RUN          set to 1 to print the command instead of running it
set -euo pipefail
STAGE=${1:?usage: torchrun.sh pretrain|finetune [extra flags]}
shift
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$STAGE"
if [ -z "${GPUS_PER_NODE:-}" ]; then
  GPUS_PER_NODE=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
  [ "$GPUS_PER_NODE" -ge 1 ] || GPUS_PER_NODE=1
fi
[ -n "${DRY_RUN:-}" ] || set -x
exec ${DRY_RUN:+echo} torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$GPUS_PER_NODE" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  "$PATCHES_SCRIPT" "${PATCHES_ARGS[@]}" "$@"
