# Table 4 (Cityscapes, ResNet-50), DO-Conv in both stages: the ResNetV1c-50 pre-trained on
# ImageNet with DO-Conv is loaded with its D and W into DO-Conv layers, and
# every non-pointwise conv is a DOConv2d during segmentation training (24).
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

# The DO-Conv ImageNet checkpoint (configs/resnet/resnetv1c50-doconv_8xb32_in1k.py, an
# mmpretrain checkpoint; its 'backbone.' keys are used).  To use another
# one, override --cfg-options model.backbone.init_cfg.checkpoint=PATH
doconv_backbone_checkpoint = 'work_dirs/resnetv1c50-doconv_8xb32_in1k/epoch_100.pth'  # noqa: E501

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
