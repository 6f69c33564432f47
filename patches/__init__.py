"""PATCHES: masked-autoencoder video pre-training (VideoMAE's recipe) and fine-tuning at any patch grid."""
