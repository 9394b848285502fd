"""Convert state dicts of the public reference DOConv2d to mmdoconv's layout.

The reference PyTorch layer (github.com/yangyanli/DO-Conv) stores, per layer,
``W`` ``(C_out, C_in/groups, D_mul)``, ``D`` (already ``D - I``) and a
frozen ``d_diag`` ``(C_in, M*N, D_mul)``, and composes
``W'[o, i] = sum_s (D + d_diag)[i, :, s] W_r[o, i, s]`` after reshaping
``W`` to ``(C_out/groups, C_in, D_mul)``.  For ``groups == 1`` and for
depthwise layers with ``C_out == C_in`` that reshape keeps every output
channel on its own input channels, so ``W`` and ``D`` carry over as they
are.  Otherwise the reshape pairs output channels with the wrong input
channels' ``D``; such a layer still computes *some* plain kernel, so it is
converted exactly by folding: ``weight = W'`` and ``D = 0``.
"""
import math
import warnings
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ..cnn.compose import doconv_identity, weight_for_kernel


def reference_kernel(w: Tensor, d_full: Tensor, groups: int) -> Tensor:
    """The kernel the public reference layer convolves with,
    ``(C_out, C_in/g, M*N)``, from its ``W`` ``(C_out, C_in/g, D_mul)`` and
    ``D`` (identity included) ``(C_in, M*N, D_mul)``, with its arithmetic
    (right for ``groups`` 1 and depthwise only, see the module docstring)."""
    out_channels, in_per_group, d_mul = w.shape
    in_channels = d_full.shape[0]
    w_reshaped = w.reshape(out_channels // groups, in_channels, d_mul)
    composed = torch.einsum('ims,ois->oim', d_full, w_reshaped)
    return composed.reshape(out_channels, in_per_group, -1)


def _kernel_size(prefix: str, kernel_numel: int,
                 kernel_sizes: Optional[Mapping[str, Tuple[int, int]]]
                 ) -> Tuple[int, int]:
    name = prefix[:-1]
    if kernel_sizes and name in kernel_sizes:
        kernel_h, kernel_w = kernel_sizes[name]
        if kernel_h * kernel_w != kernel_numel:
            raise ValueError(f'kernel_sizes[{name!r}] = {(kernel_h, kernel_w)} '
                             f'does not have M*N = {kernel_numel}')
        return kernel_h, kernel_w
    side = math.isqrt(kernel_numel)
    if side * side != kernel_numel:
        raise ValueError(
            f'layer {name!r} has M*N = {kernel_numel}, which is not square; '
            'pass kernel_sizes={name: (M, N)}')
    return side, side


@torch.no_grad()
def convert_reference_state_dict(
        state_dict: Mapping[str, Tensor],
        kernel_sizes: Optional[Mapping[str, Tuple[int, int]]] = None
) -> 'OrderedDict[str, Tensor]':
    """Convert a reference-DOConv2d state dict into mmdoconv's layout.

    Args:
        state_dict: State dict with reference layers (``<prefix>.W``, and for
            non-pointwise layers ``<prefix>.D`` and ``<prefix>.d_diag``).
        kernel_sizes: ``{layer name: (M, N)}`` for non-square kernels; square
            kernels are inferred from ``M*N``.

    Returns:
        A new state dict that loads into the same model built with
        :class:`~mmdoconv.DOConv2d` (``D_mul`` as in the reference).
    """
    result: Dict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        if key.endswith('d_diag'):
            continue
        if not (key == 'W' or key.endswith('.W')):
            if not ((key == 'D' or key.endswith('.D'))
                    and key[:-1] + 'W' in state_dict):
                result[key] = value
            continue
        prefix = key[:-1]
        w = value
        out_channels, in_per_group, d_mul = w.shape
        d = state_dict.get(prefix + 'D')
        if d is None:  # pointwise: the reference keeps W only
            result[prefix + 'weight'] = w.reshape(out_channels, in_per_group,
                                                  1, 1)
            continue
        in_channels, kernel_numel, _ = d.shape
        groups = in_channels // in_per_group
        kernel_h, kernel_w = _kernel_size(prefix, kernel_numel, kernel_sizes)
        identity = doconv_identity(kernel_numel, d_mul, dtype=d.dtype,
                                   device=d.device)
        d_diag = state_dict.get(prefix + 'd_diag', identity.expand_as(d))
        d_minus_identity = d
        if not torch.equal(d_diag, identity.expand_as(d)):
            # An edited identity part: move the difference into D so that
            # D + I is unchanged.
            d_minus_identity = d + d_diag - identity
        same_mapping = groups == 1 or (groups == in_channels
                                       and out_channels == in_channels)
        if same_mapping:
            weight = w.reshape(out_channels, in_per_group, 1, d_mul) \
                if d_mul > kernel_numel else w.reshape(
                    out_channels, in_per_group, kernel_h, kernel_w)
            result[prefix + 'weight'] = weight
            result[prefix + 'D'] = d_minus_identity
        else:
            warnings.warn(
                f'{prefix[:-1]}: the reference layer pairs output channels '
                f'with other input channels\' D for groups={groups}, '
                f'C_in={in_channels}, C_out={out_channels}; converting it '
                'exactly as its folded kernel with D = 0')
            kernel = reference_kernel(w, d + d_diag, groups)
            result[prefix + 'weight'] = weight_for_kernel(
                kernel.reshape(out_channels, in_per_group, kernel_h,
                               kernel_w), d_mul)
            result[prefix + 'D'] = torch.zeros_like(d)
        if d_mul > kernel_numel:
            result[prefix + 'kernel_hw'] = torch.tensor([kernel_h, kernel_w])
    return result
