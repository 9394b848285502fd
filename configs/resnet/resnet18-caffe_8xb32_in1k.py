# ResNet-v1-18 baseline (paper Table 2): stride on the first 1x1 conv of
# each bottleneck (mmpretrain's style='caffe'), as in He et al. 2016. For BasicBlock depths the stride is on the first 3x3 conv in both
# styles, so v1 and v1b are the same network here (the paper trained them
# separately).
_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']

model = dict(backbone=dict(style='caffe'))
