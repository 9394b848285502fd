# ResNet-v1-152 baseline (paper Table 2): stride on the first 1x1 conv of
# each bottleneck (mmpretrain's style='caffe'), as in He et al. 2016.
_base_ = ['mmpretrain::resnet/resnet152_8xb32_in1k.py']

model = dict(backbone=dict(style='caffe'))
