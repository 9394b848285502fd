# Baseline of the paper's Table 4 (PASCAL VOC, ResNet-101): mmseg's config as it is.
_base_ = ['mmseg::deeplabv3/deeplabv3_r101-d8_4xb4-20k_voc12aug-512x512.py']
