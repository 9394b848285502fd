# ResNeXt-50 32x4d baseline (paper Table 3, DO-GConv): mmpretrain's config.
_base_ = ['mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py']
