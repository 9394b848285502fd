# Table 4 (Cityscapes, ResNet-50), DO-Conv in the segmentation stage only: the plain
# ImageNet-pretrained ResNetV1c (open-mmlab) is loaded with D = I, and every
# non-pointwise conv is a DOConv2d during segmentation training (24): the 3
# deep-stem 3x3, 16 bottleneck 3x3, the 3 dilated ASPP 3x3 (dilation
# 12/24/36), the ASPP bottleneck 3x3 and the auxiliary FCN head's 3x3.  1x1
# convs stay plain.
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

# The switch: the Runner converts the model right after building it.
runner_type = 'DOConvRunner'

custom_hooks = [dict(type='DOConvFoldHook')]
