# Something-Something V2 settings for scripts/launch/*: variables only, each overridable from the environment.
#   DATA_ROOT   folder with train.csv, val.csv, test.csv and the videos or frame folders they list
: "${DATA_ROOT:?set DATA_ROOT to the SSv2 folder (train.csv, val.csv, test.csv and the videos)}"
PRETRAIN_LIST=${PRETRAIN_LIST:-$DATA_ROOT/train.csv}
FINETUNE_DATA=${FINETUNE_DATA:-$DATA_ROOT}
DATA_SET=SSV2
NB_CLASSES=174
SAMPLING_RATE=${SAMPLING_RATE:-2}
MASK_RATIO=${MASK_RATIO:-0.9}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-800}
PRETRAIN_WARMUP=${PRETRAIN_WARMUP:-40}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-40}
FINETUNE_LR=${FINETUNE_LR:-5e-4}
TEST_SEGMENTS=${TEST_SEGMENTS:-2}
TEST_CROPS=${TEST_CROPS:-3}
