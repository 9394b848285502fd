"""Independent DO-Conv implementations for the tests, written from the paper.

Nothing here imports mmdoconv's maths: these follow the paper's *feature
composition* (Eq. 3, Fig. 3-a) and its definition of D, so agreement with
mmdoconv's kernel composition is a real check of both.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def identity_part(kernel_numel: int, d_mul: int) -> Tensor:
    """Paper §4.5: identity matrices filled in as far as they fit, then zeros."""
    part = torch.zeros(kernel_numel, d_mul, dtype=torch.float64)
    for column in range(d_mul - d_mul % kernel_numel):
        part[column % kernel_numel, column] = 1.0
    return part


def pad_input(x: Tensor, kernel_size, dilation, padding, padding_mode) -> Tensor:
    """Apply a conv's padding explicitly, 'same' included."""
    if padding == 'valid':
        return x
    if padding == 'same':
        pads = []
        for k, d in zip(reversed(kernel_size), reversed(dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        pads = [padding[1], padding[1], padding[0], padding[0]]
    mode = 'constant' if padding_mode == 'zeros' else padding_mode
    return F.pad(x, pads, mode=mode)


def feature_composition(x: Tensor, d_full: Tensor, w: Tensor, bias, *,
                        kernel_size, stride, padding, dilation, groups,
                        padding_mode) -> Tensor:
    """O = W * (D o P): a depthwise conv with D, then a grouped 1x1 conv with W.

    Args:
        d_full: D itself (not D - I), shape (C_in, M*N, D_mul).
        w: W, shape (C_out, C_in/groups, D_mul).
    """
    in_channels, kernel_numel, d_mul = d_full.shape
    kernel_h, kernel_w = kernel_size
    # Depthwise: input channel c makes D_mul maps; map (c, d) is channel
    # c*D_mul + d and its kernel at position (m, n) is D[c, m*N + n, d].
    depthwise_kernel = d_full.permute(0, 2, 1).reshape(
        in_channels * d_mul, 1, kernel_h, kernel_w)
    x = pad_input(x, kernel_size, dilation, padding, padding_mode)
    expanded = F.conv2d(x, depthwise_kernel, stride=stride, dilation=dilation,
                        groups=in_channels)
    # Pointwise: output o of group g reads maps (c, d) of its group's inputs.
    pointwise_kernel = w.reshape(w.shape[0], -1, 1, 1)
    return F.conv2d(expanded, pointwise_kernel, bias, groups=groups)
