"""mmdoconv: DO-Conv (arXiv 2006.12030) for OpenMMLab.

Importing this package registers the ``DOConv`` conv type in mmengine's root
MODELS registry, so ``conv_cfg=dict(type='DOConv')`` works in mmdet, mmseg
and mmpretrain configs.
"""
from .compose import compose_kernel, doconv_identity
from .doconv import DOConv2d
from .fold import count_doconv, fold_doconv, fold_state_dict
from .registry import build_doconv
from .version import __version__

__all__ = [
    'DOConv2d', 'build_doconv', 'compose_kernel', 'doconv_identity',
    'fold_doconv', 'fold_state_dict', 'count_doconv', '__version__'
]
