# Sourced by the launchers in this folder (never run on its own): turns the environment variables they
# document into PATCHES_SCRIPT (the entry script) and PATCHES_ARGS (its flags).
#   usage: source scripts/launch/common.sh pretrain|finetune
STAGE=${1:?common.sh needs the stage: pretrain or finetune}
PATCHES_ROOT=${PATCHES_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

DATASET=${DATASET:?set DATASET to k400, ssv2, ucf101 or hmdb51}
case "$DATASET" in
  k400|ssv2|ucf101|hmdb51) source "$PATCHES_ROOT/scripts/datasets/$DATASET.sh" ;;
  *) echo "DATASET must be k400, ssv2, ucf101 or hmdb51, got '$DATASET'" >&2; return 2 ;;
esac

GRID=${GRID:-196}
case "$GRID" in
  196) GRID_FLAGS=(--input_size 224 --patch_size 16) ;;  # 14 x 14 patches per frame
  324) GRID_FLAGS=(--input_size 288 --patch_size 16) ;;  # 18 x 18 patches per frame
  *) echo "GRID must be 196 or 324 (patches per frame), got '$GRID'" >&2; return 2 ;;
esac
GRID_FLAGS+=(--num_frames "${NUM_FRAMES:-16}" --tubelet_size 2 --sampling_rate "$SAMPLING_RATE")

SIZE=${SIZE:-base}
RUN_NAME=${RUN_NAME:-${DATASET}_${SIZE}_${GRID}}
PRETRAIN_DIR=${PRETRAIN_DIR:-$PATCHES_ROOT/output/${RUN_NAME}_pretrain}
FINETUNE_DIR=${FINETUNE_DIR:-$PATCHES_ROOT/output/${RUN_NAME}_finetune}
COMMON_FLAGS=(--num_workers "${NUM_WORKERS:-8}" --save_ckpt_every_steps "${SAVE_EVERY_STEPS:-1000}"
              --keep_ckpts "${KEEP_CKPTS:-3}")
if [ -n "${DEEPSPEED:-}" ]; then
  COMMON_FLAGS+=(--enable_deepspeed --zero_stage "${ZERO_STAGE:-1}")
fi

if [ "$STAGE" = pretrain ]; then
  PATCHES_SCRIPT=$PATCHES_ROOT/run_mae_pretraining.py
  PATCHES_ARGS=(--model "pretrain_videomae_${SIZE}_patch16_224" "${GRID_FLAGS[@]}"
                --data_path "$PRETRAIN_LIST" --data_root "${PRETRAIN_ROOT:-$DATA_ROOT}"
                --mask_type tube --mask_ratio "$MASK_RATIO" --batch_size "${BATCH_SIZE:-32}"
                --num_sample "${NUM_SAMPLE:-2}" --epochs "$PRETRAIN_EPOCHS" --warmup_epochs "$PRETRAIN_WARMUP"
                --lr "${PRETRAIN_LR:-1.5e-4}" --save_ckpt_freq "${SAVE_CKPT_FREQ:-20}"
                --output_dir "$PRETRAIN_DIR" "${COMMON_FLAGS[@]}")
elif [ "$STAGE" = finetune ]; then
  if [ -z "${FINETUNE_FROM:-}" ]; then
    if [ -n "${DEEPSPEED:-}" ]; then
      FINETUNE_FROM=$PRETRAIN_DIR/checkpoint-$((PRETRAIN_EPOCHS - 1))/checkpoint.pth
    else
      FINETUNE_FROM=$PRETRAIN_DIR/checkpoint-$((PRETRAIN_EPOCHS - 1)).pth
    fi
  fi
  PATCHES_SCRIPT=$PATCHES_ROOT/run_class_finetuning.py
  PATCHES_ARGS=(--model "vit_${SIZE}_patch16_224" "${GRID_FLAGS[@]}" --finetune "$FINETUNE_FROM"
                --data_set "$DATA_SET" --data_path "$FINETUNE_DATA" --data_root "$DATA_ROOT"
                --nb_classes "$NB_CLASSES" --split "${SPLIT:-1}" --batch_size "${BATCH_SIZE:-8}"
                --num_sample "${NUM_SAMPLE:-2}" --epochs "$FINETUNE_EPOCHS" --warmup_epochs 5
                --lr "$FINETUNE_LR" --layer_decay 0.75 --opt_betas 0.9 0.999 --weight_decay 0.05
                --drop_path 0.1 --test_num_segment "$TEST_SEGMENTS" --test_num_crop "$TEST_CROPS"
                --save_ckpt_freq "${SAVE_CKPT_FREQ:-10}" --output_dir "$FINETUNE_DIR" "${COMMON_FLAGS[@]}")
else
  echo "stage must be pretrain or finetune, got '$STAGE'" >&2
  return 2
fi
