# Backbone-stage baseline: mmpretrain's resnet50 config as it is.
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py']
