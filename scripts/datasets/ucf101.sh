# UCF101 paths for scripts/launch/*: variables only, each overridable from the environment. The recipe
# (RECIPE, default ucf101_base_3200) lives in scripts/recipes.py.
#   DATA_ROOT      the folder scripts/prepare_dataset.py ucf101 wrote (train.csv, val.csv, test.csv and the
#                  videos), or the UCF-101/ video folder (<Class>/v_<Class>_gXX_cYY.avi)
#   SPLIT          official split 1, 2 or 3 [1]
#   SPLIT_DIR      folder of classInd.txt, trainlist0N.txt, testlist0N.txt [DATA_ROOT if it has train.csv, else DATA_ROOT/../ucfTrainTestlist];
#                  or a folder of VideoMAE's train.csv/val.csv/test.csv, which are then read instead
#   PRETRAIN_LIST  pre-training list [SPLIT_DIR/train.csv if there, else SPLIT_DIR/trainlist0SPLIT.txt: its 'path label' lines, labels unused]
#   FINETUNE_DATA  folder of the fine-tuning lists [SPLIT_DIR]
: "${DATA_ROOT:?set DATA_ROOT to the UCF-101 video folder}"
SPLIT=${SPLIT:-1}
# a folder made by scripts/prepare_dataset.py holds its own train.csv, val.csv, test.csv
if [ -f "$DATA_ROOT/train.csv" ]; then SPLIT_DIR=${SPLIT_DIR:-$DATA_ROOT}; fi
SPLIT_DIR=${SPLIT_DIR:-$DATA_ROOT/../ucfTrainTestlist}
if [ -z "${PRETRAIN_LIST:-}" ]; then
  PRETRAIN_LIST=$SPLIT_DIR/trainlist0$SPLIT.txt
  [ -f "$SPLIT_DIR/train.csv" ] && PRETRAIN_LIST=$SPLIT_DIR/train.csv
fi
FINETUNE_DATA=${FINETUNE_DATA:-$SPLIT_DIR}
