# Kinetics-400 settings for scripts/launch/*: variables only, each overridable from the environment.
#   DATA_ROOT   folder with train.csv, val.csv, test.csv and the videos they list (see DATASET.md)
: "${DATA_ROOT:?set DATA_ROOT to the Kinetics-400 folder (train.csv, val.csv, test.csv and the videos)}"
PRETRAIN_LIST=${PRETRAIN_LIST:-$DATA_ROOT/train.csv}
FINETUNE_DATA=${FINETUNE_DATA:-$DATA_ROOT}
DATA_SET=Kinetics-400
NB_CLASSES=400
SAMPLING_RATE=${SAMPLING_RATE:-4}
MASK_RATIO=${MASK_RATIO:-0.9}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-800}
PRETRAIN_WARMUP=${PRETRAIN_WARMUP:-40}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-75}
FINETUNE_LR=${FINETUNE_LR:-1e-3}
TEST_SEGMENTS=${TEST_SEGMENTS:-5}
TEST_CROPS=${TEST_CROPS:-3}
