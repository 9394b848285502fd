# ResNet-v1b-18 baseline (paper Table 2): mmpretrain's config as it is.
_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']
