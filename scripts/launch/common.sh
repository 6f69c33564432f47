# Sourced by the launchers in this folder (never run on its own): turns the environment variables they
# document into PATCHES_SCRIPT (the entry script) and PATCHES_ARGS (its flags).
#   usage: PATCHES_WORLD=<processes> source scripts/launch/common.sh pretrain|finetune [extra flags]
# The recipe's numbers come from scripts/recipes.py (VideoMAE's published flags, its total batch kept on
# PATCHES_WORLD processes by --update_freq); the data set's paths from scripts/datasets/DATASET.sh.
# The extra flags become PATCHES_EXTRA, except --batch_size and --update_freq, which go to recipes.py: a
# --batch_size alone (as BATCH_SIZE) gets the --update_freq that keeps the recipe's total batch, an --update_freq
# alone the --batch_size, or the launch is refused with the numbers; both together are taken as given, and the
# total batch they make is printed when it is not the recipe's.
STAGE=${1:?common.sh needs the stage: pretrain or finetune}
shift
PATCHES_EXTRA=()
UPDATE_FREQ=${UPDATE_FREQ:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --batch_size) BATCH_SIZE=${2:?--batch_size needs a value}; shift 2 ;;
    --batch_size=*) BATCH_SIZE=${1#*=}; shift ;;
    --update_freq) UPDATE_FREQ=${2:?--update_freq needs a value}; shift 2 ;;
    --update_freq=*) UPDATE_FREQ=${1#*=}; shift ;;
    *) PATCHES_EXTRA+=("$1"); shift ;;
  esac
done
PATCHES_ROOT=${PATCHES_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

DATASET=${DATASET:?set DATASET to k400, ssv2, ucf101 or hmdb51}
case "$DATASET" in
  k400|ssv2|ucf101|hmdb51) source "$PATCHES_ROOT/scripts/datasets/$DATASET.sh" || return 2 ;;
  *) echo "DATASET must be k400, ssv2, ucf101 or hmdb51, got '$DATASET'" >&2; return 2 ;;
esac
case "$DATASET" in
  k400) RECIPE=${RECIPE:-k400_base_800} ;;
  ssv2) RECIPE=${RECIPE:-ssv2_base_800} ;;
  ucf101) RECIPE=${RECIPE:-ucf101_base_3200} ;;
  hmdb51) RECIPE=${RECIPE:-hmdb51_base_4800} ;;
esac
GRID=${GRID:-224/16}
RECIPES_PY=("${PYTHON:-python}" "$PATCHES_ROOT/scripts/recipes.py")
RECIPE_OUT=$("${RECIPES_PY[@]}" --flags "$RECIPE" "$STAGE" --world "${PATCHES_WORLD:-1}" --grid "$GRID" \
             ${BATCH_SIZE:+--batch_size "$BATCH_SIZE"} ${UPDATE_FREQ:+--update_freq "$UPDATE_FREQ"}) || return 2
mapfile -t RECIPE_FLAGS <<< "$RECIPE_OUT"

RUN_NAME=${RUN_NAME:-${RECIPE}_${GRID//\//-}}
PRETRAIN_DIR=${PRETRAIN_DIR:-$PATCHES_ROOT/output/${RUN_NAME}_pretrain}
FINETUNE_DIR=${FINETUNE_DIR:-$PATCHES_ROOT/output/${RUN_NAME}_finetune}
COMMON_FLAGS=(--num_workers "${NUM_WORKERS:-8}" --save_ckpt_every_steps "${SAVE_EVERY_STEPS:-1000}"
              --keep_ckpts "${KEEP_CKPTS:-3}")
if [ -n "${DEEPSPEED:-}" ]; then
  COMMON_FLAGS+=(--enable_deepspeed --zero_stage "${ZERO_STAGE:-1}")
fi

if [ "$STAGE" = pretrain ]; then
  PATCHES_SCRIPT=$PATCHES_ROOT/run_mae_pretraining.py
  PATCHES_ARGS=("${RECIPE_FLAGS[@]}" --data_path "$PRETRAIN_LIST" --data_root "${PRETRAIN_ROOT:-$DATA_ROOT}"
                --output_dir "$PRETRAIN_DIR" "${COMMON_FLAGS[@]}")
elif [ "$STAGE" = finetune ]; then
  if [ -z "${FINETUNE_FROM:-}" ]; then
    EPOCH=$("${RECIPES_PY[@]}" --checkpoint_epoch "$RECIPE") || return 2
    if [ -n "${DEEPSPEED:-}" ]; then
      FINETUNE_FROM=$PRETRAIN_DIR/checkpoint-$EPOCH/checkpoint.pth
    else
      FINETUNE_FROM=$PRETRAIN_DIR/checkpoint-$EPOCH.pth
    fi
  fi
  PATCHES_SCRIPT=$PATCHES_ROOT/run_class_finetuning.py
  PATCHES_ARGS=("${RECIPE_FLAGS[@]}" --finetune "$FINETUNE_FROM" --data_path "$FINETUNE_DATA"
                --data_root "$DATA_ROOT" --split "${SPLIT:-1}" --output_dir "$FINETUNE_DIR" "${COMMON_FLAGS[@]}")
else
  echo "stage must be pretrain or finetune, got '$STAGE'" >&2
  return 2
fi
