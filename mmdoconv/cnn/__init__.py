"""The DO-Conv layer and its maths (paper §3)."""
from .compose import compose_kernel, doconv_identity
from .conversion import ConversionReport, convert_to_doconv, doconv_like
from .doconv import (D_INITS, D_MUL_RULES, DOConv2d, compose_weight,
                     resolve_d_mul)
from .doconv_type import DOConv

__all__ = [
    'compose_kernel', 'doconv_identity', 'compose_weight', 'DOConv2d',
    'DOConv', 'resolve_d_mul', 'D_MUL_RULES', 'D_INITS',
    'convert_to_doconv', 'ConversionReport', 'doconv_like'
]
