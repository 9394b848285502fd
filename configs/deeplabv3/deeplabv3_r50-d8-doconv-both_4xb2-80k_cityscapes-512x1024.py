# Table 4 (Cityscapes, ResNet-50), DO-Conv in both stages: the doconv-task segmentor
# (24 DO-Conv layers), with the ResNetV1c pre-trained on ImageNet with DO-Conv
# loaded with its D and W into the backbone's DO-Conv layers.
_base_ = ['./deeplabv3_r50-d8-doconv-task_4xb2-80k_cityscapes-512x1024.py']

# The DO-Conv ImageNet checkpoint (configs/resnet/resnetv1c50-doconv_8xb32_in1k.py,
# an mmpretrain checkpoint; its 'backbone.' keys are used).  To use another
# one, override --cfg-options model.backbone.init_cfg.checkpoint=PATH
doconv_backbone_checkpoint = 'work_dirs/resnetv1c50-doconv_8xb32_in1k/epoch_100.pth'  # noqa: E501

model = dict(
    pretrained=None,
    backbone=dict(
        init_cfg=dict(
            type='PretrainedDOConv',
            checkpoint=doconv_backbone_checkpoint,
            prefix='backbone.')))
