# He et al.'s schedule for ResNet-110 / -164: lr 0.01 until training
# "warms up" (about 400 iterations), then 0.1 and the same steps.
_base_ = ['./he2016_64k.py']
param_scheduler = [
    dict(type='ConstantLR', factor=0.1, by_epoch=False, begin=0, end=400),
    dict(type='MultiStepLR', by_epoch=False, milestones=[32000, 48000],
         gamma=0.1)
]
