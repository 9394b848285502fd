"""The DO-Conv layer and its maths (paper §3)."""
from .compose import compose_kernel, doconv_identity
from .conversion import ConversionReport, convert_to_doconv, doconv_like
from .doconv import (D_INITS, D_MUL_RULES, DOConv2d, DOConvLayer,
                     compose_weight, resolve_d_mul)
from .doconv_nd import (DOConv1d, DOConv3d, DOConvTranspose1d,
                        DOConvTranspose2d, DOConvTranspose3d)
from .doconv_type import DOConv

__all__ = [
    'compose_kernel', 'doconv_identity', 'compose_weight', 'DOConv2d',
    'DOConv', 'DOConvLayer', 'DOConv1d', 'DOConv3d', 'DOConvTranspose1d',
    'DOConvTranspose2d', 'DOConvTranspose3d', 'resolve_d_mul', 'D_MUL_RULES', 'D_INITS',
    'convert_to_doconv', 'ConversionReport', 'doconv_like'
]
