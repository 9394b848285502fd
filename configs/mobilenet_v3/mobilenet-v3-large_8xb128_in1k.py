# MobileNet v3 large baseline (paper Table 3, DO-DConv): mmpretrain's config.
_base_ = ['mmpretrain::mobilenet_v3/mobilenet-v3-large_8xb128_in1k.py']
