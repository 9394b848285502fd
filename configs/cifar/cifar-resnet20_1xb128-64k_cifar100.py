# ResNet-v1-20 on CIFAR-100, baseline (paper Table 1): He et al.'s
# CIFAR network (option-A shortcuts) and schedule.
_base_ = [
    '../_base_/cifar/safe_cifar100.py', '../_base_/cifar/he2016_64k.py'
]
model = dict(
    type='ImageClassifier',
    backbone=dict(type='CIFARResNet', depth=20),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=100,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))
