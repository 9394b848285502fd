# ResNet-v2-20 on CIFAR-100 with DO-Conv, D_mul = (M+2)x(N+2) = 25 for its 3x3
# kernels (paper Table 8): the switch's D_mul rule.
_base_ = ['./cifar-preact-resnet20-doconv_1xb128-64k_cifar100.py']

doconv = dict(D_mul='M+2xN+2')
