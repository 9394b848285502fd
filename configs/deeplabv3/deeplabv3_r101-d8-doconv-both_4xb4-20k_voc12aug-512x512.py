# Table 4 (PASCAL VOC, ResNet-101), DO-Conv in both stages: the doconv-task segmentor
# (41 DO-Conv layers), with the ResNetV1c pre-trained on ImageNet with DO-Conv
# loaded with its D and W into the backbone's DO-Conv layers.
_base_ = ['./deeplabv3_r101-d8-doconv-task_4xb4-20k_voc12aug-512x512.py']

# The DO-Conv ImageNet checkpoint (configs/resnet/resnetv1c101-doconv_8xb32_in1k.py,
# an mmpretrain checkpoint; its 'backbone.' keys are used).  To use another
# one, override --cfg-options model.backbone.init_cfg.checkpoint=PATH
doconv_backbone_checkpoint = 'work_dirs/resnetv1c101-doconv_8xb32_in1k/epoch_100.pth'  # noqa: E501

model = dict(
    pretrained=None,
    backbone=dict(
        init_cfg=dict(
            type='PretrainedDOConv',
            checkpoint=doconv_backbone_checkpoint,
            prefix='backbone.')))
