# Plain-20 on CIFAR-100 with DO-Conv (paper Table 1): the baseline beside it
# plus the switch (every non-pointwise conv, nothing else changed).
_base_ = ['./cifar-plain20_1xb128-64k_cifar100.py']

runner_type = 'DOConvRunner'
custom_hooks = [dict(type='DOConvFoldHook')]
