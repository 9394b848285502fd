# Plain-20 on CIFAR-100, baseline (paper Table 1): He et al.'s CIFAR network
# (no shortcuts) and schedule.
_base_ = [
    '../_base_/cifar/classifier.py', '../_base_/cifar/safe_cifar100.py',
    '../_base_/cifar/he2016_64k.py'
]
model = dict(
    backbone=dict(type='CIFARPlainNet', depth=20),
    head=dict(num_classes=100, in_channels=64))
