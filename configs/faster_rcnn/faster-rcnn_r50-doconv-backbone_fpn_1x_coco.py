# Table 5, DO-Conv in the backbone stage only: the ResNet-50 pre-trained on
# ImageNet with DO-Conv (configs/resnet/resnet50-doconv_8xb32_in1k.py) is
# folded into plain convs as it loads, and detection trains plain convs.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

# The DO-Conv ImageNet checkpoint (an mmpretrain checkpoint; its 'backbone.'
# keys are used).  To use another one, override
# --cfg-options model.backbone.init_cfg.checkpoint=PATH
doconv_backbone_checkpoint = 'work_dirs/resnet50-doconv_8xb32_in1k/epoch_100.pth'  # noqa: E501

model = dict(
    backbone=dict(
        init_cfg=dict(
            type='PretrainedDOConv',
            checkpoint=doconv_backbone_checkpoint,
            prefix='backbone.')))
