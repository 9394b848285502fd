# Table 5, DO-Conv in both stages: the ResNet-50 pre-trained on ImageNet with
# DO-Conv is loaded with its D and W into DO-Conv layers, and every
# non-pointwise conv of the detector is a DOConv2d during detection training
# (22 layers, as in the doconv-task config).
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

# The DO-Conv ImageNet checkpoint (an mmpretrain checkpoint; its 'backbone.'
# keys are used).  To use another one, override
# --cfg-options model.backbone.init_cfg.checkpoint=PATH
doconv_backbone_checkpoint = 'work_dirs/resnet50-doconv_8xb32_in1k/epoch_100.pth'  # noqa: E501

model = dict(
    backbone=dict(
        conv_cfg=dict(type='DOConv'),
        init_cfg=dict(
            type='PretrainedDOConv',
            checkpoint=doconv_backbone_checkpoint,
            prefix='backbone.')),
    neck=dict(conv_cfg=dict(type='DOConv')),
    rpn_head=dict(type='DOConvRPNHead', conv_cfg=dict(type='DOConv')))

custom_hooks = [dict(type='DOConvFoldHook')]
