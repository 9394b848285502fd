# Table 4 (PASCAL VOC, ResNet-101), DO-Conv in both stages: the ResNetV1c-101 pre-trained on
# ImageNet with DO-Conv is loaded with its D and W into DO-Conv layers, and
# every non-pointwise conv is a DOConv2d during segmentation training (41).
_base_ = ['mmseg::deeplabv3/deeplabv3_r101-d8_4xb4-20k_voc12aug-512x512.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

# The DO-Conv ImageNet checkpoint (configs/resnet/resnetv1c101-doconv_8xb32_in1k.py, an
# mmpretrain checkpoint; its 'backbone.' keys are used).  To use another
# one, override --cfg-options model.backbone.init_cfg.checkpoint=PATH
doconv_backbone_checkpoint = 'work_dirs/resnetv1c101-doconv_8xb32_in1k/epoch_100.pth'  # noqa: E501

model = dict(
    pretrained=None,
    backbone=dict(
        conv_cfg=dict(type='DOConv'),
        init_cfg=dict(
            type='PretrainedDOConv',
            checkpoint=doconv_backbone_checkpoint,
            prefix='backbone.')),
    decode_head=dict(conv_cfg=dict(type='DOConv')),
    auxiliary_head=dict(conv_cfg=dict(type='DOConv')))

custom_hooks = [dict(type='DOConvFoldHook')]
