# ResNet-v1b-101 baseline (paper Table 2): mmpretrain's config as it is.
_base_ = ['mmpretrain::resnet/resnet101_8xb32_in1k.py']
