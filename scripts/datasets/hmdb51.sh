# HMDB51 settings for scripts/launch/*: variables only, each overridable from the environment.
#   DATA_ROOT    the hmdb51/ video folder (<class>/<video>.avi)
#   SPLIT_DIR    folder of the <class>_test_split{1,2,3}.txt files (default DATA_ROOT/../testTrainMulti_7030_splits)
#   PRETRAIN_LIST  list of the training videos for pre-training (default SPLIT_DIR/pretrain_train0N.csv)
: "${DATA_ROOT:?set DATA_ROOT to the HMDB51 video folder}"
SPLIT=${SPLIT:-1}
SPLIT_DIR=${SPLIT_DIR:-$DATA_ROOT/../testTrainMulti_7030_splits}
PRETRAIN_LIST=${PRETRAIN_LIST:-$SPLIT_DIR/pretrain_train0$SPLIT.csv}
FINETUNE_DATA=${FINETUNE_DATA:-$SPLIT_DIR}
DATA_SET=HMDB51
NB_CLASSES=51
SAMPLING_RATE=${SAMPLING_RATE:-2}
MASK_RATIO=${MASK_RATIO:-0.9}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-4800}
PRETRAIN_WARMUP=${PRETRAIN_WARMUP:-40}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-50}
FINETUNE_LR=${FINETUNE_LR:-1e-3}
TEST_SEGMENTS=${TEST_SEGMENTS:-10}
TEST_CROPS=${TEST_CROPS:-3}
