"""DO-Conv for mmcv's ``MaskedConv2d`` (GA-RetinaNet's ``retina_cls`` /
``retina_reg``).

``MaskedConv2d`` is an ``nn.Conv2d`` whose forward takes an optional mask:
without one (training, and inference without guided anchoring's mask) it is
the plain conv; with one it runs mmcv's masked-conv op (CUDA/NPU only,
inference only: the op has no backward) on the locations the mask selects.
The twin convolves with ``W' = D^T o W`` on both paths and folds back to a
``MaskedConv2d``.
"""
from typing import Optional

from torch import Tensor

from .doconv import DOConv2d


class DOMaskedConv2d(DOConv2d):
    """:class:`DOConv2d` with ``MaskedConv2d``'s forward."""

    @property
    def plain_type(self) -> type:
        from mmcv.ops import MaskedConv2d
        return MaskedConv2d

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is None:
            return super().forward(input)
        from mmcv.ops import masked_conv2d
        return masked_conv2d(input, mask, self.composed_weight(), self.bias,
                             self.padding)
