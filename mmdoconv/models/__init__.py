"""OpenMMLab modules that need a DO-Conv-aware variant.

Imported by :mod:`mmdoconv` only when mmdet is installed, so the layer and
folding work without it.
"""
from .rpn_head import DOConvRPNHead

__all__ = ['DOConvRPNHead']
