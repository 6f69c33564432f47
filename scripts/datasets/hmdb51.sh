# HMDB51 paths for scripts/launch/*: variables only, each overridable from the environment. The recipe
# (RECIPE, default hmdb51_base_4800) lives in scripts/recipes.py.
#   DATA_ROOT      the folder scripts/prepare_dataset.py hmdb51 wrote (train.csv, val.csv, test.csv and the
#                  videos), or the hmdb51/ video folder (<class>/<video>.avi)
#   SPLIT          official split 1, 2 or 3 [1]
#   SPLIT_DIR      folder of the <class>_test_split{1,2,3}.txt files [DATA_ROOT if it has train.csv, else DATA_ROOT/../testTrainMulti_7030_splits];
#                  or a folder of VideoMAE's train.csv/val.csv/test.csv, which are then read instead
#   PRETRAIN_LIST  pre-training list [SPLIT_DIR/train.csv if there, else SPLIT_DIR/train0SPLIT.csv]; make it from the split files with
#                  for f in "$SPLIT_DIR"/*_test_split1.txt; do c=$(basename "$f" _test_split1.txt)
#                    awk -v c="$c" '$2 == 1 {print c "/" $1}' "$f"; done > "$SPLIT_DIR/train01.csv"
#   FINETUNE_DATA  folder of the fine-tuning lists [SPLIT_DIR]
: "${DATA_ROOT:?set DATA_ROOT to the HMDB51 video folder}"
SPLIT=${SPLIT:-1}
# a folder made by scripts/prepare_dataset.py holds its own train.csv, val.csv, test.csv
if [ -f "$DATA_ROOT/train.csv" ]; then SPLIT_DIR=${SPLIT_DIR:-$DATA_ROOT}; fi
SPLIT_DIR=${SPLIT_DIR:-$DATA_ROOT/../testTrainMulti_7030_splits}
if [ -z "${PRETRAIN_LIST:-}" ]; then
  PRETRAIN_LIST=$SPLIT_DIR/train0$SPLIT.csv
  [ -f "$SPLIT_DIR/train.csv" ] && PRETRAIN_LIST=$SPLIT_DIR/train.csv
fi
FINETUNE_DATA=${FINETUNE_DATA:-$SPLIT_DIR}
