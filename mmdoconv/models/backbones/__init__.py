"""Backbones of the paper's ImageNet and CIFAR tables that mmpretrain does not have,
written the mmpretrain way and registered in its MODELS registry."""
from .cifar_resnet import CIFARPlainNet, CIFARPreActResNet, CIFARResNet
from .mobilenet_v1 import MobileNetV1
from .plain_resnet import PlainResNet
from .preact_resnet import PreActResNet

__all__ = [
    'CIFARPlainNet', 'CIFARPreActResNet', 'CIFARResNet', 'MobileNetV1',
    'PlainResNet', 'PreActResNet'
]
