# ResNet-v1-56 on CIFAR-10, baseline (paper Table 1): He et al.'s CIFAR network
# (option-A shortcuts) and schedule.
_base_ = [
    '../_base_/cifar/classifier.py', '../_base_/cifar/safe_cifar10.py',
    '../_base_/cifar/he2016_64k.py'
]
model = dict(
    backbone=dict(type='CIFARResNet', depth=56),
    head=dict(num_classes=10, in_channels=64))
