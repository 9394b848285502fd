# Baseline of the paper's Table 4 (Cityscapes, ResNet-50): mmseg's config as it is.
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py']
