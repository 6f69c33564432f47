# Something-Something V2 paths for scripts/launch/*: variables only, each overridable from the environment.
# The recipe (RECIPE, default ssv2_base_800) lives in scripts/recipes.py: no flip, segment sampling.
#   DATA_ROOT      folder with train.csv, val.csv, test.csv and the videos or frame folders they list
#                  (scripts/prepare_dataset.py ssv2 writes it; DATASET.md)
#   PRETRAIN_LIST  pre-training list [DATA_ROOT/train.csv]
#   FINETUNE_DATA  folder of the fine-tuning lists [DATA_ROOT]
: "${DATA_ROOT:?set DATA_ROOT to the SSv2 folder (train.csv, val.csv, test.csv and the videos)}"
PRETRAIN_LIST=${PRETRAIN_LIST:-$DATA_ROOT/train.csv}
FINETUNE_DATA=${FINETUNE_DATA:-$DATA_ROOT}
