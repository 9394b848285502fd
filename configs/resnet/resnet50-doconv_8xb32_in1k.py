# The paper's backbone stage (Tables 4-5): ImageNet pre-training of
# ResNet-50 (pytorch style), the backbone of mmdet's Faster R-CNN R50-FPN,
# with every non-pointwise conv a DOConv2d.  Ablation knobs
# (docs/en/user_guides/paper_experiments.md, "Backbone stage"):
# model.backbone.conv_cfg.D_mul (Table 8), .D_init (Table 7), and the
# switch's doconv.include for the stages (Table 6).
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

model = dict(backbone=dict(conv_cfg=dict(type='DOConv')))

custom_hooks = [dict(type='DOConvFoldHook')]
