"""DO-Conv for mmcv's ``Conv2dAdaptivePadding`` (TensorFlow's 'SAME'
padding, computed from each input's size): EfficientNet and EfficientNetV2
build every conv with it.

The padding is mmcv's, the convolution the DO-Conv layer's; folding gives
back a ``Conv2dAdaptivePadding`` holding ``W'``, so the folded model is the
plain model, class included.
"""
import math

import torch.nn.functional as F
from torch import Tensor

from .doconv import DOConv2d


class DOConv2dAdaptivePadding(DOConv2d):
    """:class:`DOConv2d` that pads each input as mmcv's
    ``Conv2dAdaptivePadding`` does (``padding`` stays 0).

    mmcv reads the kernel's extent from ``weight.shape``; W of a
    ``D_mul > M*N`` layer is ``(C_out, C_in/groups, 1, D_mul)``, so the
    extent comes from ``kernel_size`` here.
    """

    @property
    def plain_type(self) -> type:
        from mmcv.cnn.bricks import Conv2dAdaptivePadding
        return Conv2dAdaptivePadding

    def forward(self, input: Tensor) -> Tensor:
        pads = []
        for size, kernel, stride, dilation in zip(
                reversed(input.shape[-2:]), reversed(self.kernel_size),
                reversed(self.stride), reversed(self.dilation)):
            out = math.ceil(size / stride)
            total = max((out - 1) * stride + (kernel - 1) * dilation + 1 -
                        size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            input = F.pad(input, pads)
        return super().forward(input)
