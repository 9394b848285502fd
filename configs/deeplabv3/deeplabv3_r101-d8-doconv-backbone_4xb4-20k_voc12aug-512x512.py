# Table 4 (PASCAL VOC, ResNet-101), DO-Conv in the backbone stage only: the ResNetV1c-101
# pre-trained on ImageNet with DO-Conv is folded into plain convs as it loads,
# and segmentation trains plain convs.
_base_ = ['mmseg::deeplabv3/deeplabv3_r101-d8_4xb4-20k_voc12aug-512x512.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

# The DO-Conv ImageNet checkpoint (configs/resnet/resnetv1c101-doconv_8xb32_in1k.py, an
# mmpretrain checkpoint; its 'backbone.' keys are used).  To use another
# one, override --cfg-options model.backbone.init_cfg.checkpoint=PATH
doconv_backbone_checkpoint = 'work_dirs/resnetv1c101-doconv_8xb32_in1k/epoch_100.pth'  # noqa: E501

model = dict(
    pretrained=None,
    backbone=dict(
        init_cfg=dict(
            type='PretrainedDOConv',
            checkpoint=doconv_backbone_checkpoint,
            prefix='backbone.')))
