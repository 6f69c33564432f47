# UCF101 settings for scripts/launch/*: variables only, each overridable from the environment.
#   DATA_ROOT    the UCF-101/ video folder (<Class>/v_<Class>_gXX_cYY.avi)
#   SPLIT_DIR    folder of classInd.txt, trainlist0N.txt, testlist0N.txt (default DATA_ROOT/../ucfTrainTestlist)
#   PRETRAIN_LIST  list of the training videos for pre-training (default SPLIT_DIR/pretrain_train0N.csv;
#                make it with: cut -d' ' -f1 trainlist01.txt > pretrain_train01.csv)
: "${DATA_ROOT:?set DATA_ROOT to the UCF-101 video folder}"
SPLIT=${SPLIT:-1}
SPLIT_DIR=${SPLIT_DIR:-$DATA_ROOT/../ucfTrainTestlist}
PRETRAIN_LIST=${PRETRAIN_LIST:-$SPLIT_DIR/pretrain_train0$SPLIT.csv}
FINETUNE_DATA=${FINETUNE_DATA:-$SPLIT_DIR}
DATA_SET=UCF101
NB_CLASSES=101
SAMPLING_RATE=${SAMPLING_RATE:-4}
MASK_RATIO=${MASK_RATIO:-0.75}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-3200}
PRETRAIN_WARMUP=${PRETRAIN_WARMUP:-40}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-100}
FINETUNE_LR=${FINETUNE_LR:-1e-3}
TEST_SEGMENTS=${TEST_SEGMENTS:-5}
TEST_CROPS=${TEST_CROPS:-3}
