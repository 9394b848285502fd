# Backbone-stage baseline: mmpretrain's resnetv1c101 config as it is.
_base_ = ['mmpretrain::resnet/resnetv1c101_8xb32_in1k.py']
