# ResNet-v2-20 on CIFAR-100 with DO-Conv in stages 0, 1 only (paper Table 6; 0
# is the stem, 1-3 the residual stages): the switch's include.
_base_ = ['./cifar-preact-resnet20-doconv_1xb128-64k_cifar100.py']

doconv = dict(include=['backbone.stem', 'backbone.layer1'])
