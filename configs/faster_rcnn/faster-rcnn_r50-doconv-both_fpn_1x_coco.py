# Table 5, DO-Conv in both stages: the doconv-task detector (22 DO-Conv
# layers), with the ResNet-50 pre-trained on ImageNet with DO-Conv loaded with
# its D and W into the backbone's DO-Conv layers.
_base_ = ['./faster-rcnn_r50-doconv-task_fpn_1x_coco.py']

# The DO-Conv ImageNet checkpoint (configs/resnet/resnet50-doconv_8xb32_in1k.py,
# an mmpretrain checkpoint; its 'backbone.' keys are used).  To use another
# one, override --cfg-options model.backbone.init_cfg.checkpoint=PATH
doconv_backbone_checkpoint = 'work_dirs/resnet50-doconv_8xb32_in1k/epoch_100.pth'  # noqa: E501

model = dict(
    backbone=dict(
        init_cfg=dict(
            type='PretrainedDOConv',
            checkpoint=doconv_backbone_checkpoint,
            prefix='backbone.')))
