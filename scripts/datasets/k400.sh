# Kinetics-400 paths for scripts/launch/*: variables only, each overridable from the environment. The recipe
# (RECIPE, default k400_base_800) lives in scripts/recipes.py.
#   DATA_ROOT      folder with train.csv, val.csv, test.csv and the videos they list (scripts/prepare_dataset.py k400 writes it; DATASET.md)
#   PRETRAIN_LIST  pre-training list [DATA_ROOT/train.csv]
#   FINETUNE_DATA  folder of the fine-tuning lists [DATA_ROOT]
: "${DATA_ROOT:?set DATA_ROOT to the Kinetics-400 folder (train.csv, val.csv, test.csv and the videos)}"
PRETRAIN_LIST=${PRETRAIN_LIST:-$DATA_ROOT/train.csv}
FINETUNE_DATA=${FINETUNE_DATA:-$DATA_ROOT}
