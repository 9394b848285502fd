# ResNet-v1b-152 baseline (paper Table 2): mmpretrain's config as it is.
_base_ = ['mmpretrain::resnet/resnet152_8xb32_in1k.py']
