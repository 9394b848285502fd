# MobileNet v2 baseline (paper Table 3, DO-DConv): mmpretrain's config.
_base_ = ['mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py']
