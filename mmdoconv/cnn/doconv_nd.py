"""DO-Conv for the other conv kinds: 1-D, 3-D and transposed convolutions.

The paper defines the over-parameterization on the kernel (§3): per input
channel, a ``K x D_mul`` matrix composed with ``W`` over the kernel's ``K``
positions.  Nothing in it is 2-D: a 1-D kernel has ``K = k`` positions, a
3-D one ``K = t*h*w``, and a transposed conv's kernel is composed the same
way, per input channel of its weight ``(C_in, C_out/groups, *kernel)``
(:func:`~mmdoconv.cnn.compose.compose_any_kernel`).  Folding gives back the
plain layer with ``W'``, so the deployed model is the plain model.

State, as for :class:`~mmdoconv.cnn.doconv.DOConv2d`: ``weight`` is ``W``
(a plain kernel's shape when ``D_mul == K``, else ``(A, B, 1, ..., 1,
D_mul)``), ``D`` is ``D - I`` of shape ``(C_in, K, D_mul)``; in addition
``kernel_shape`` records the kernel's extents and a transposed layer's
``transposed_kernel`` buffer says so, so that
:func:`~mmdoconv.deploy.fold.fold_state_dict` can fold these entries from a
state dict alone (a transposed and a plain conv's entries can have the same
shapes).  Both are dropped by folding.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.tracing import is_tracing
from .compose import compose_any_kernel, doconv_identity, weight_for_kernel
from .doconv import (DOConvLayer, IncompatibleCheckpointError,
                     check_d_init, check_recompute_kernel, resolve_d_mul_nd)
from .recomposing_conv import RecomposingConvNd

_SIZE = Union[int, Tuple[int, ...]]


def compose_any_weight(weight: Tensor, d_minus_identity: Tensor,
                       identity: Tensor, kernel_size: Tuple[int, ...],
                       groups: int, transposed: bool) -> Tensor:
    """:func:`~mmdoconv.cnn.compose.compose_any_kernel` in the parameters'
    dtype (autocast off, as :func:`~mmdoconv.cnn.doconv.compose_weight`);
    ``torch.fx`` records it as one call (``torch.fx.wrap`` below)."""
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return compose_any_kernel(weight, d_minus_identity, identity,
                                      kernel_size, groups, transposed)
    return compose_any_kernel(weight, d_minus_identity, identity,
                              kernel_size, groups, transposed)


torch.fx.wrap('compose_any_weight')


class _DOConvNd(DOConvLayer):
    """The DO-Conv state and forward shared by the 1-D, 3-D and transposed
    layers; mixed in before their ``nn`` class (see the module docstring).
    """

    recompute_kernel: bool = True

    def _init_doconv(self, D_mul: Union[None, int, str], D_init: str,
                     recompute_kernel: bool, device, dtype) -> None:
        """Add D (and the layout buffers) after the ``nn`` constructor."""
        check_d_init(D_init)
        check_recompute_kernel(recompute_kernel)
        self.D_init = D_init
        self.recompute_kernel = recompute_kernel
        kernel_numel = math.prod(self.kernel_size)
        self.D_mul = resolve_d_mul_nd(D_mul, self.kernel_size)
        self._cached_kernel: Optional[Tensor] = None
        self._cache_key: Optional[tuple] = None
        factory_kwargs = {'device': device, 'dtype': dtype}
        if kernel_numel == 1:  # pointwise: nothing to over-parameterize
            self.register_parameter('D', None)
            self.register_buffer('_identity', None, persistent=False)
            return
        if self.D_mul > kernel_numel:
            ones = (1, ) * (len(self.kernel_size) - 1)
            self.weight = nn.Parameter(torch.empty(
                *self.weight.shape[:2], *ones, self.D_mul, **factory_kwargs))
        self.register_buffer('kernel_shape',
                             torch.tensor(self.kernel_size, device=device))
        if self.transposed:
            self.register_buffer('transposed_kernel',
                                 torch.tensor(True, device=device))
        self.D = nn.Parameter(torch.empty(self.in_channels, kernel_numel,
                                          self.D_mul, **factory_kwargs))
        self.register_buffer(
            '_identity', doconv_identity(kernel_numel, self.D_mul,
                                         **factory_kwargs),
            persistent=False)
        self.reset_parameters()

    def _compose(self, weight: Tensor) -> Tensor:
        return compose_any_weight(weight, self.D, self._identity,
                                  self.kernel_size, self.groups,
                                  self.transposed)

    def _recomposes(self, input: Tensor, padding) -> bool:
        return (self.recompute_kernel and torch.is_grad_enabled()
                and not is_tracing() and padding is not None
                and any(t is not None and t.requires_grad
                        for t in (input, self.weight, self.D, self.bias)))

    def _numeric_padding(self) -> Optional[Tuple[int, ...]]:
        """The padding :class:`RecomposingConvNd` convolves with (the input
        padded first for non-zero modes), or None for an asymmetric 'same',
        which takes the ``nn`` layer's own path and keeps W'."""
        dims = len(self.kernel_size)
        if self.padding_mode != 'zeros' or self.padding == 'valid':
            return (0, ) * dims
        if self.padding != 'same':
            return tuple(self.padding)
        pairs = self._reversed_padding_repeated_twice
        left, right = pairs[0::2], pairs[1::2]
        return tuple(reversed(left)) if left == right else None

    def _recompose_conv(self, input: Tensor, padding: Tuple[int, ...],
                        output_padding: Sequence[int]) -> Tensor:
        if self.padding_mode != 'zeros':
            input = F.pad(input, self._reversed_padding_repeated_twice,
                          mode=self.padding_mode)
        device_type = input.device.type
        autocast_dtype = (torch.get_autocast_dtype(device_type)
                          if torch.is_autocast_enabled(device_type) else None)
        conv_args = (self.kernel_size, self.stride, padding, self.dilation,
                     self.transposed, tuple(output_padding), self.groups)
        return RecomposingConvNd.apply(input, self.weight, self.D,
                                       self._identity, self.bias, conv_args,
                                       autocast_dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Load plain checkpoints too (a missing D means D = I; a plain
        kernel loads into a ``D_mul > K`` layer as W padded with zeros) and
        refuse a D of another shape, naming both."""
        weight_key = prefix + 'weight'
        loaded_weight = state_dict.get(weight_key)
        kernel_numel = math.prod(self.kernel_size)
        if (self.D is not None and isinstance(loaded_weight, Tensor)
                and self.D_mul > kernel_numel
                and loaded_weight.shape[2:] == self.kernel_size):
            state_dict = dict(state_dict)
            rows = loaded_weight.reshape(*loaded_weight.shape[:2], 1, -1)
            state_dict[weight_key] = weight_for_kernel(
                rows, self.D_mul).reshape(self.weight.shape)
        loaded_d = state_dict.get(prefix + 'D')
        if (self.D is not None and isinstance(loaded_d, Tensor)
                and loaded_d.shape != self.D.shape):
            raise IncompatibleCheckpointError(
                f'{prefix}D: the checkpoint\'s D has shape '
                f'{tuple(loaded_d.shape)} but this layer\'s is '
                f'{tuple(self.D.shape)} (D_mul={self.D_mul}); build the '
                f'model with the checkpoint\'s D_mul, or fold the checkpoint '
                '(tools/model_converters/fold_checkpoint.py) to start from '
                "its W'")
        self._load_plain_or_doconv(state_dict, prefix, local_metadata, strict,
                                   missing_keys, unexpected_keys, error_msgs)
        loaded_shape = state_dict.get(prefix + 'kernel_shape')
        if (self.D is not None and isinstance(loaded_shape, Tensor)
                and tuple(loaded_shape.tolist()) != self.kernel_size):
            error_msgs.append(
                f'{prefix}kernel_shape: checkpoint kernel '
                f'{tuple(loaded_shape.tolist())} does not match this '
                f'layer\'s kernel_size {self.kernel_size}')


class _DOConvForward(_DOConvNd):
    """Constructor (``nn.Conv1d/3d``'s arguments, then :class:`DOConv1d`'s)
    and forward of the 1-D and 3-D layers."""

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: _SIZE, stride: _SIZE = 1,
                 padding: Union[str, _SIZE] = 0, dilation: _SIZE = 1,
                 groups: int = 1, bias: bool = True,
                 padding_mode: str = 'zeros', device=None, dtype=None,
                 D_mul: Union[None, int, str] = None,
                 D_init: str = 'identity',
                 recompute_kernel: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding, dilation, groups, bias, padding_mode,
                         device, dtype)
        self._init_doconv(D_mul, D_init, recompute_kernel, device, dtype)

    def _conv_forward(self, input: Tensor, weight: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
        if self.D is not None:
            padding = self._numeric_padding()
            if (weight is self.weight and bias is self.bias
                    and self._recomposes(input, padding)):
                return self._recompose_conv(input, padding,
                                            (0, ) * len(self.kernel_size))
            weight = self.composed_weight() if weight is self.weight \
                else self._compose(weight)
        # The nn layer's _conv_forward handles padding_mode.
        return super()._conv_forward(input, weight, bias)


class _DOConvTransposeForward(_DOConvNd):
    """Constructor (``nn.ConvTranspose*``'s arguments, then
    :class:`DOConv1d`'s) and forward (``output_size`` as in ``nn``) of the
    transposed layers."""

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: _SIZE, stride: _SIZE = 1, padding: _SIZE = 0,
                 output_padding: _SIZE = 0, groups: int = 1,
                 bias: bool = True, dilation: _SIZE = 1,
                 padding_mode: str = 'zeros', device=None, dtype=None,
                 D_mul: Union[None, int, str] = None,
                 D_init: str = 'identity',
                 recompute_kernel: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding, output_padding, groups, bias, dilation,
                         padding_mode, device, dtype)
        self._init_doconv(D_mul, D_init, recompute_kernel, device, dtype)

    def _fold_kwargs(self) -> dict:
        return dict(super()._fold_kwargs(),
                    output_padding=self.output_padding)

    def forward(self, input: Tensor,
                output_size: Optional[Sequence[int]] = None) -> Tensor:
        if self.padding_mode != 'zeros':
            raise ValueError(f'Only "zeros" padding mode is supported for '
                             f'{type(self).__name__}')
        dims = len(self.kernel_size)
        output_padding = self._output_padding(input, output_size,
                                              self.stride, self.padding,
                                              self.kernel_size, dims,
                                              self.dilation)
        if self.D is not None and self._recomposes(input, self.padding):
            return self._recompose_conv(input, tuple(self.padding),
                                        output_padding)
        convolve = (F.conv_transpose1d, F.conv_transpose2d,
                    F.conv_transpose3d)[dims - 1]
        return convolve(input, self.composed_weight(), self.bias,
                        self.stride, self.padding, output_padding,
                        self.groups, self.dilation)


class DOConv1d(_DOConvForward, nn.Conv1d):
    """DO-Conv for ``nn.Conv1d``: trains ``D`` and ``W`` and convolves with
    ``W' = D^T o W``; :meth:`fold` gives an ``nn.Conv1d``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation,
        groups, bias, padding_mode, device, dtype: As for ``nn.Conv1d``.
        D_mul: Depth multiplier, ``>= K`` (the kernel's positions), or a
            rule name of :data:`~mmdoconv.cnn.doconv.D_MUL_RULES` applied per
            extent (:func:`resolve_d_mul_nd`); defaults to ``K``.
        D_init: ``'identity'`` or ``'random'`` (as for ``DOConv2d``).
        recompute_kernel: Compose ``W'`` again in the backward instead of
            keeping it (as for ``DOConv2d``).  Default: True.
    """

    plain_base = plain_type = nn.Conv1d


class DOConv3d(_DOConvForward, nn.Conv3d):
    """DO-Conv for ``nn.Conv3d`` (video models); as :class:`DOConv1d`,
    folding to an ``nn.Conv3d``."""

    plain_base = plain_type = nn.Conv3d


class DOConvTranspose1d(_DOConvTransposeForward, nn.ConvTranspose1d):
    """DO-Conv for ``nn.ConvTranspose1d``: each input channel's ``D``
    composes its block of ``W`` (``(C_in, C_out/groups, k)``); folds to an
    ``nn.ConvTranspose1d``."""

    plain_base = plain_type = nn.ConvTranspose1d


class DOConvTranspose2d(_DOConvTransposeForward, nn.ConvTranspose2d):
    """DO-Conv for ``nn.ConvTranspose2d`` (mask heads' upsampling, decoders);
    as :class:`DOConvTranspose1d`."""

    plain_base = plain_type = nn.ConvTranspose2d


class DOConvTranspose3d(_DOConvTransposeForward, nn.ConvTranspose3d):
    """DO-Conv for ``nn.ConvTranspose3d``; as :class:`DOConvTranspose1d`."""

    plain_base = plain_type = nn.ConvTranspose3d


#: The DO-Conv layer of each ``nn`` conv class other than ``nn.Conv2d``.
DOCONV_LAYERS = {
    nn.Conv1d: DOConv1d,
    nn.Conv3d: DOConv3d,
    nn.ConvTranspose1d: DOConvTranspose1d,
    nn.ConvTranspose2d: DOConvTranspose2d,
    nn.ConvTranspose3d: DOConvTranspose3d,
}
