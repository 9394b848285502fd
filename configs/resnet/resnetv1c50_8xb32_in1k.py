# Backbone-stage baseline: mmpretrain's resnetv1c50 config as it is.
_base_ = ['mmpretrain::resnet/resnetv1c50_8xb32_in1k.py']
