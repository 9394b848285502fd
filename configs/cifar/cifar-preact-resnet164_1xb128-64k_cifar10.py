# ResNet-v2-164 on CIFAR-10, baseline (paper Table 1): He et al.'s CIFAR
# network (pre-activation units, 1x1 projection shortcuts) and schedule with
# the 0.01 warm-up.
_base_ = [
    '../_base_/cifar/classifier.py', '../_base_/cifar/safe_cifar10.py',
    '../_base_/cifar/he2016_64k_warmup.py'
]
model = dict(
    backbone=dict(type='CIFARPreActResNet', depth=164),
    head=dict(num_classes=10, in_channels=256))
