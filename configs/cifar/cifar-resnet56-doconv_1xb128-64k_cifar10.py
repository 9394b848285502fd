# ResNet-v1-56 on CIFAR-10 with DO-Conv (paper Table 1): the baseline beside it
# plus the switch (every non-pointwise conv, nothing else changed).
_base_ = ['./cifar-resnet56_1xb128-64k_cifar10.py']

runner_type = 'DOConvRunner'
custom_hooks = [dict(type='DOConvFoldHook')]
