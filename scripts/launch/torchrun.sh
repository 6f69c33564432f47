#!/usr/bin/env bash
# Pre-train or fine-tune with torchrun, on one node or many (run this once on every node).
#
#   DATASET=k400 GRID=224/16 DATA_ROOT=/data/k400 scripts/launch/torchrun.sh pretrain
#   DATASET=ssv2 GRID=288/16 DATA_ROOT=/data/ssv2 scripts/launch/torchrun.sh finetune --batch_size 4
#   # two nodes: on node 0 and node 1, the same command with NODE_RANK=0 / NODE_RANK=1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.example MASTER_PORT=29500 DATASET=k400 DATA_ROOT=/data/k400 \
#     scripts/launch/torchrun.sh pretrain
#
# First argument: pretrain or finetune; any further arguments are passed on to the entry script and
# override the flags below, except --batch_size and --update_freq: the recipe's total batch is kept (a new
# --batch_size gets the --update_freq that keeps it, or the launch is refused with the numbers; see common.sh).
# Re-running the same command resumes from the newest checkpoint.
#
# Environment (defaults in brackets); every variable the launchers read:
#   DATASET          k400, ssv2, ucf101 or hmdb51 (required); its paths: scripts/datasets/DATASET.sh
#   DATA_ROOT        the dataset folder (required); SPLIT, SPLIT_DIR, PRETRAIN_LIST, PRETRAIN_ROOT [DATA_ROOT]
#                    and FINETUNE_DATA: see scripts/datasets/DATASET.sh
#   RECIPE           one of VideoMAE's recipes in scripts/recipes.py [k400_base_800, ssv2_base_800,
#                    ucf101_base_3200, hmdb51_base_4800]; `python scripts/recipes.py` prints them all
#   GRID             SIZE/PATCH in pixels, e.g. 224/16, 288/16, 216/12, 224/32; or 196 / 324 patches per
#                    frame (224/16, 288/16) [224/16]
#   BATCH_SIZE       videos per GPU per step [the recipe's]; the recipe's total batch is kept with
#                    --update_freq, so BATCH_SIZE x processes must divide it (the flag --batch_size is the same)
#   NUM_WORKERS      data loader workers per GPU [8]
#   RUN_NAME         names the output folders [RECIPE_GRID]
#   PRETRAIN_DIR     pre-training output [output/RUN_NAME_pretrain]
#   FINETUNE_DIR     fine-tuning output [output/RUN_NAME_finetune]
#   FINETUNE_FROM    checkpoint to fine-tune [the one VideoMAE's recipe reads in PRETRAIN_DIR]
#   SAVE_EVERY_STEPS checkpoint-latest every so many steps inside an epoch [1000]
#   KEEP_CKPTS       epoch checkpoints kept [3]
#   DEEPSPEED        set to 1 for --enable_deepspeed, with ZERO_STAGE [1]
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   the torchrun rendezvous [1, 0, 127.0.0.1, 29500]
#   GPUS_PER_NODE    processes per node [the GPUs torch sees (CUDA_VISIBLE_DEVICES counts), else 1]
#   PYTHON           the interpreter that reads scripts/recipes.py and counts the GPUs [python]
#   PATCHES_ROOT     the repository [the folder above scripts/]
#   DRY_RUN          set to 1 to print the command instead of running it
set -euo pipefail
STAGE=${1:?usage: torchrun.sh pretrain|finetune [extra flags]}
shift
if [ -z "${GPUS_PER_NODE:-}" ]; then
  GPUS_PER_NODE=1
  if command -v nvidia-smi >/dev/null || command -v rocm-smi >/dev/null; then
    # torch's count honours CUDA_VISIBLE_DEVICES (nvidia-smi -L lists every GPU of the node)
    GPUS_PER_NODE=$("${PYTHON:-python}" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
    [ "${GPUS_PER_NODE:-0}" -ge 1 ] 2>/dev/null || GPUS_PER_NODE=1
  fi
fi
PATCHES_WORLD=$(( ${NNODES:-1} * GPUS_PER_NODE ))
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$STAGE" "$@"
[ -n "${DRY_RUN:-}" ] || set -x
exec ${DRY_RUN:+echo} torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$GPUS_PER_NODE" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  "$PATCHES_SCRIPT" "${PATCHES_ARGS[@]}" ${PATCHES_EXTRA[@]+"${PATCHES_EXTRA[@]}"}
