# ResNet-v2-20 on CIFAR-10, baseline (paper Table 1): He et al.'s
# CIFAR network (pre-activation units, 1x1 projection shortcuts) and schedule.
_base_ = [
    '../_base_/cifar/safe_cifar10.py', '../_base_/cifar/he2016_64k.py'
]
model = dict(
    type='ImageClassifier',
    backbone=dict(type='CIFARPreActResNet', depth=20),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))
