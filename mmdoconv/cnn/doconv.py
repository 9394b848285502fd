"""DOConv2d: a drop-in ``nn.Conv2d`` with a depthwise over-parameterization.

Paper: Cao et al., "DO-Conv: Depthwise Over-parameterized Convolutional
Layer", arXiv 2006.12030.  The maths lives in :mod:`mmdoconv.cnn.compose`.
"""
import math
import numbers
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.modules.utils import _pair

from ..ops.tracing import is_capturing_graph, is_tracing
from .compose import compose_kernel, doconv_identity, weight_for_kernel
from .recomposing_conv import recomposing_conv2d

_size_2_t = Union[int, Tuple[int, int]]


def _check_positive_pair(name: str, value: _size_2_t) -> Tuple[int, int]:
    pair = _pair(value)
    if len(pair) != 2 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool)
            and v > 0 for v in pair):
        raise ValueError(f'{name} must be a positive int or a pair of '
                         f'positive ints, but got {value!r}')
    return tuple(int(v) for v in pair)


def _check_padding(padding: Union[str, _size_2_t]) -> None:
    if isinstance(padding, str):
        if padding not in ('same', 'valid'):
            raise ValueError(f"padding must be 'same', 'valid', an int or a "
                             f'pair of ints >= 0, but got {padding!r}')
        return
    pair = _pair(padding)
    if len(pair) != 2 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool)
            and v >= 0 for v in pair):
        raise ValueError(f"padding must be 'same', 'valid', an int or a "
                         f'pair of ints >= 0, but got {padding!r}')


class IncompatibleCheckpointError(ValueError):
    """A checkpoint's DO-Conv state that this layer cannot take."""


#: Named D_mul rules, for one config across kernel sizes (paper Table 8:
#: M*N, (M+2)*(N+2), (2M)*(2N)).  The names have no brackets or commas, so
#: they survive ``--cfg-options`` (mmengine's DictAction reads "(...)" as a
#: tuple); the paper's spellings are accepted as aliases in config files.
#: Each rule per kernel extent: a rule's ``D_mul`` is the product over the
#: kernel's extents (1-D, 2-D and 3-D kernels alike).
EXTENT_RULES: Dict[str, Callable[[int], int]] = {
    'MxN': lambda k: k,
    'M+2xN+2': lambda k: k + 2,
    '2Mx2N': lambda k: 2 * k,
}
D_MUL_RULES: Dict[str, Callable[[int, int], int]] = {
    name: (lambda m, n, extent=extent: extent(m) * extent(n))
    for name, extent in EXTENT_RULES.items()
}
D_MUL_ALIASES = {'M*N': 'MxN', '(M+2)*(N+2)': 'M+2xN+2', '(2M)*(2N)': '2Mx2N'}
D_INITS = ('identity', 'random')


def check_d_init(d_init: str) -> None:
    """Raise ValueError unless ``d_init`` is one of :data:`D_INITS`."""
    if d_init not in D_INITS:
        raise ValueError(
            f'D_init must be one of {D_INITS}, but got {d_init!r}')


def check_recompute_kernel(recompute_kernel: bool) -> None:
    """Raise ValueError unless ``recompute_kernel`` is a bool."""
    if not isinstance(recompute_kernel, bool):
        raise ValueError('recompute_kernel must be True or False, but got '
                         f'{recompute_kernel!r}')


def resolve_d_mul(d_mul: Union[None, int, str], kernel_size: _size_2_t) -> int:
    """Check ``D_mul`` against a kernel size and fill in the default ``M*N``.

    Args:
        d_mul: The depth multiplier: None for ``M*N``, an int, or a rule name
            from :data:`D_MUL_RULES` (``'MxN'``, ``'M+2xN+2'``, ``'2Mx2N'``,
            the settings of the paper's Table 8; the paper's spellings
            ``'M*N'``, ``'(M+2)*(N+2)'``, ``'(2M)*(2N)'`` work too).
        kernel_size: ``M`` or ``(M, N)``.

    Returns:
        The depth multiplier to use.

    Raises:
        TypeError: If ``d_mul`` is neither an int nor a rule name.
        ValueError: If ``d_mul < M*N`` (``W'`` could then not express every
            plain kernel, paper §3), or the rule name is unknown.
    """
    extents = _check_positive_pair('kernel_size', kernel_size)
    return resolve_d_mul_nd(d_mul, extents, bound='M*N')


def resolve_d_mul_nd(d_mul: Union[None, int, str],
                     kernel_size: Tuple[int, ...], bound: str = 'K') -> int:
    """:func:`resolve_d_mul` for a kernel of any dimension: a rule applies
    to every extent (``'M+2xN+2'`` of a 3x3x3 kernel is 5*5*5), an int must
    be at least the kernel's ``K`` positions (``bound`` names ``K`` in the
    message)."""
    kernel_numel = math.prod(kernel_size)
    if d_mul is None:
        return kernel_numel
    if isinstance(d_mul, str):
        rule = D_MUL_ALIASES.get(d_mul, d_mul)
        if rule not in EXTENT_RULES:
            raise ValueError(f'D_mul rule must be one of '
                             f'{sorted(D_MUL_RULES)} (or the paper\'s '
                             f'{sorted(D_MUL_ALIASES)}), but got {d_mul!r}')
        return math.prod(EXTENT_RULES[rule](k) for k in kernel_size)
    if not isinstance(d_mul, numbers.Integral) or isinstance(d_mul, bool):
        raise TypeError(f'D_mul must be an int or a rule name, but got '
                        f'{d_mul!r} of type {type(d_mul).__name__}')
    if d_mul < kernel_numel:
        raise ValueError(
            f'D_mul must be >= {bound} = {kernel_numel} for a '
            f'{"x".join(map(str, kernel_size))} kernel, but got {d_mul}')
    return int(d_mul)


def compose_weight(weight: Tensor, d_minus_identity: Tensor,
                   identity: Tensor, kernel_size: Tuple[int, int],
                   groups: int) -> Tensor:
    """:func:`~mmdoconv.cnn.compose.compose_kernel` in the parameters' dtype.

    Under autocast the composition still runs in the parameters' dtype (the
    conv itself is autocast's); ``torch.fx`` records this function as one
    call (``torch.fx.wrap`` below), so symbolic tracing sees the layer as
    ``compose_weight`` + ``conv2d`` without evaluating the autocast check.
    """
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            return compose_kernel(weight, d_minus_identity, identity,
                                  kernel_size, groups)
    return compose_kernel(weight, d_minus_identity, identity, kernel_size,
                          groups)


torch.fx.wrap('compose_weight')


class DOConvLayer:
    """What every DO-Conv layer shares, whatever its conv kind.

    Mixed in before the ``nn`` conv class (:class:`DOConv2d`, and the 1-D,
    3-D and transposed layers of :mod:`mmdoconv.cnn.doconv_nd`); code that
    folds, counts or converts DO-Conv layers asks ``isinstance(module,
    DOConvLayer)``.  A layer holds ``D`` (``D - I``, None for a pointwise
    kernel or once folded), ``_identity``, ``D_init``, ``D_mul`` and
    implements ``_compose(weight)``.
    """

    #: The ``nn`` conv class the layer extends (what :meth:`fold` builds).
    plain_base: type = nn.Conv2d
    #: The plain conv class :meth:`fold` returns: :attr:`plain_base` or a
    #: subclass that only changes how its forward pads.
    plain_type: type = nn.Conv2d
    #: Buffers that restate the kernel's layout for state-dict-only folding.
    _LAYOUT_BUFFERS = ('kernel_hw', 'kernel_shape', 'transposed_kernel')

    def _compose(self, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Initialise W and bias as the ``nn`` conv does, and D (stored as
        D - I)."""
        super().reset_parameters()
        # The nn constructor calls this before D exists.
        if getattr(self, 'D', None) is not None:
            self.reset_d()

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.D is not None:
            init = '' if self.D_init == 'identity' else ', D_init=random'
            keep = '' if self.recompute_kernel else ', recompute_kernel=False'
            return text + f', D_mul={self.D_mul}{init}{keep}'
        return text + (', folded' if math.prod(self.kernel_size) > 1 else '')

    def composed_weight(self) -> Tensor:
        """The plain conv kernel ``W'`` this layer currently convolves with."""
        if self.D is None:
            return self.weight
        if (self.training or torch.is_grad_enabled()
                or is_capturing_graph()):  # no cache key on proxies
            return self._compose(self.weight)  # autograd needs a fresh one
        key = (self.weight._version, self.D._version, self.weight.data_ptr(),
               self.D.data_ptr(), self.weight.dtype, self.weight.device)
        if key != self._cache_key:
            self._cached_kernel = self._compose(self.weight)
            self._cache_key = key
        return self._cached_kernel

    @torch.no_grad()
    def reset_d(self) -> None:
        """Initialise D by ``D_init``: the identity (stored D - I = 0), or
        He-normal with fan-in M*N (each output of the depthwise kernel sums
        M*N inputs; paper Table 7)."""
        if self.D_init == 'identity':
            self.D.zero_()
            return
        self.D.normal_(0.0, (2.0 / self.D.shape[1])**0.5)
        self.D.sub_(self._identity)

    def train(self, mode: bool = True):
        self._cached_kernel = self._cache_key = None
        return super().train(mode)

    def _load_plain_or_doconv(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """The ``nn`` load, reading a missing D as D = I (plain checkpoints
        load strictly) and not requiring the layout buffers, which only
        restate the constructor's arguments."""
        local_missing: list = []
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, local_missing, unexpected_keys,
                                      error_msgs)
        if prefix + 'D' in local_missing:
            with torch.no_grad():  # in place, so the version counter moves
                self.D.zero_()
        missing_keys.extend(
            key for key in local_missing
            if key[len(prefix):] not in ('D', ) + self._LAYOUT_BUFFERS)

    def _fold_kwargs(self) -> dict:
        """Constructor arguments of :attr:`plain_base` beyond the channels
        and the kernel size."""
        return dict(stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=self.groups,
                    bias=self.bias is not None,
                    padding_mode=self.padding_mode)

    @torch.no_grad()
    def fold(self) -> nn.Module:
        """Return a plain conv (:attr:`plain_type`) computing what this
        layer computes.

        The new layer has the same hyper-parameters, device and dtype, the
        composed kernel ``W'`` as weight, a copy of the bias, and the
        ``requires_grad`` flags of ``W`` and the bias.  No random number is
        drawn.
        """
        # skip_init builds the conv without the conv's random init: folding
        # must not advance the RNG a training run draws from (fold hook).
        plain = nn.utils.skip_init(
            self.plain_base, self.in_channels, self.out_channels,
            self.kernel_size, device=self.weight.device,
            dtype=self.weight.dtype, **self._fold_kwargs())
        if self.plain_type is not self.plain_base:
            # A subclass that only changes how its forward pads (mmcv's
            # Conv2dAdaptivePadding) and holds the base's state: its
            # constructor takes no device, which skip_init needs.
            plain.__class__ = self.plain_type
        plain.weight.copy_(self._compose(self.weight) if self.D is not None
                           else self.weight)
        plain.weight.requires_grad_(self.weight.requires_grad)
        if self.bias is not None:
            plain.bias.copy_(self.bias)
            plain.bias.requires_grad_(self.bias.requires_grad)
        plain.train(self.training)
        return plain

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold ``D`` into ``weight`` in place; a no-op when already folded.

        Afterwards the layer is a plain convolution (``D`` is None) whose
        state dict has a plain conv's keys and shapes.  This is the name that
        mmpretrain's and timm's re-parameterization tools look for.
        """
        if self.D is None:
            return
        kernel = self._compose(self.weight)
        requires_grad = self.weight.requires_grad
        if parametrize.is_parametrized(self):
            # Deployed, W' is the parameter: what the parametrizations
            # compute is baked in (leaving W'=the parametrization of W'
            # would apply them twice).
            for name in list(self.parametrizations):
                parametrize.remove_parametrizations(self, name)
        self.weight = nn.Parameter(kernel, requires_grad=requires_grad)
        self.D = None
        self._identity = None
        for name in self._LAYOUT_BUFFERS:
            self._buffers.pop(name, None)
        self.D_mul = math.prod(self.kernel_size)
        self._cached_kernel = self._cache_key = None


class DOConv2d(DOConvLayer, nn.Conv2d):
    """Depthwise over-parameterized 2D convolution (DO-Conv, DO-DConv, DO-GConv).

    Trains ``D`` and ``W`` and convolves with the composed kernel
    ``W' = D^T o W`` (kernel composition, paper §3).  ``groups == 1`` gives
    DO-Conv, ``groups == in_channels`` DO-DConv, anything else DO-GConv; in
    every case each input channel owns its own ``D`` matrix.

    State:

    - ``weight`` is ``W``.  With ``D_mul == M*N`` it has a plain conv's shape
      and name, so plain pretrained checkpoints load unchanged; with
      ``D_mul > M*N`` it is ``(C_out, C_in/groups, 1, D_mul)`` (4-D, so code
      that scales a conv weight per output channel works on it).
    - ``D`` holds ``D - I``, shape ``(C_in, M*N, D_mul)``, zero at
      initialisation, so a fresh layer computes exactly what the plain conv
      with the same weight computes.  The identity is never stored in the
      state dict nor given to the optimizer.
    - ``kernel_hw`` (only when ``D_mul > M*N``) records ``(M, N)``, which
      ``weight`` of that shape cannot tell apart, for :func:`~mmdoconv.fold_state_dict`.
    - A 1x1 kernel has no spatial patch to over-parameterize (paper §4), and
      a layer after :meth:`switch_to_deploy` has been folded: in both ``D`` is
      None and the layer is a plain convolution.

    In eval mode without grad the composed kernel is cached and recomputed
    only when ``weight`` or ``D`` change (tracked by their version counters
    and storage) or when ``train()``/``eval()`` is called.  Writes through
    ``param.data`` bypass version counters: mmengine's EMAHook swaps weights
    that way, and stays correct because its ValLoop and TestLoop call
    ``model.eval()`` after the swap; code of your own that writes ``.data``
    in eval mode should call ``eval()`` again.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation,
        groups, bias, padding_mode, device, dtype: As for ``nn.Conv2d``.
        D_mul: Depth multiplier, ``>= M*N``, or a rule name of
            :data:`D_MUL_RULES`; defaults to ``M*N``.
        D_init: ``'identity'`` (D = I, the paper's choice) or ``'random'``
            (He-normal D with fan-in ``M*N``; paper Table 7).
        recompute_kernel: When gradients are needed, compose ``W'`` again in
            the backward instead of keeping it from the forward
            (:class:`~mmdoconv.cnn.recomposing_conv.RecomposingConv2d`):
            training then holds no copy of ``W'`` per layer, for one more
            composition per step.  ``False`` keeps ``W'`` (faster, more
            memory).  Default: True.

    Note:
        Code written for ``nn.Conv2d`` that scales ``conv.weight`` per output
        channel stays right: mmcv's ``fuse_conv_bn`` (the layer keeps D and
        convolves with ``D^T o (c W) = c W'``) and ``efficient_conv_bn_eval``
        (see :meth:`_conv_forward`).  Code that copies ``conv.weight`` into a
        new plain conv would take W, not W': fold first
        (:func:`~mmdoconv.fold_doconv`).

    Example:
        >>> layer = DOConv2d(16, 32, 3, padding=1)
        >>> out = layer(torch.randn(2, 16, 8, 8))
        >>> plain = layer.fold()  # an nn.Conv2d with the same output
    """

    # Class default too: whole layers pickled before this option existed
    # have no such attribute in their __dict__.
    recompute_kernel: bool = True

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: _size_2_t,
                 stride: _size_2_t = 1,
                 padding: Union[str, _size_2_t] = 0,
                 dilation: _size_2_t = 1,
                 groups: int = 1,
                 bias: bool = True,
                 padding_mode: str = 'zeros',
                 device=None,
                 dtype=None,
                 D_mul: Union[None, int, str] = None,
                 D_init: str = 'identity',
                 recompute_kernel: bool = True) -> None:
        # Checks nn.Conv2d leaves to the first forward (or never makes).
        for name, value in (('in_channels', in_channels),
                            ('out_channels', out_channels),
                            ('groups', groups)):
            if not isinstance(value, numbers.Integral) or isinstance(
                    value, bool) or value <= 0:
                raise ValueError(
                    f'{name} must be a positive int, but got {value!r}')
        _check_positive_pair('stride', stride)
        _check_positive_pair('dilation', dilation)
        _check_padding(padding)
        d_mul = resolve_d_mul(D_mul, kernel_size)
        check_d_init(D_init)
        check_recompute_kernel(recompute_kernel)
        self.D_init = D_init
        self.recompute_kernel = recompute_kernel
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding, dilation, groups, bias, padding_mode,
                         device, dtype)
        factory_kwargs = {'device': device, 'dtype': dtype}
        kernel_h, kernel_w = self.kernel_size
        kernel_numel = kernel_h * kernel_w
        self.D_mul = d_mul
        self._cached_kernel: Optional[Tensor] = None
        self._cache_key: Optional[tuple] = None
        if kernel_numel == 1:
            self.register_parameter('D', None)
            self.register_buffer('_identity', None, persistent=False)
            return
        if d_mul > kernel_numel:
            # 4-D like every conv weight, so code that scales it per output
            # channel (BN fusers: weight * factor.reshape(-1, 1, 1, 1))
            # stays right; see _conv_forward.
            self.weight = nn.Parameter(
                torch.empty(out_channels, in_channels // groups, 1, d_mul,
                            **factory_kwargs))
            self.register_buffer(
                'kernel_hw',
                torch.tensor([kernel_h, kernel_w], device=device))
        self.D = nn.Parameter(
            torch.empty(in_channels, kernel_numel, d_mul, **factory_kwargs))
        self.register_buffer(
            '_identity',
            doconv_identity(kernel_numel, d_mul, **factory_kwargs),
            persistent=False)
        self.reset_parameters()

    def _compose(self, weight: Tensor) -> Tensor:
        return compose_weight(weight, self.D, self._identity,
                              self.kernel_size, self.groups)

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.weight, self.bias)

    def _conv_forward(self, input: Tensor, weight: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
        """Convolve with the composition of D and ``weight``.

        ``weight`` is W in W's layout: this layer's own, or what code written
        for ``nn.Conv2d`` hands in place of it.  mmcv's
        ``efficient_conv_bn_eval`` and BN fusers pass ``W`` scaled per output
        channel; that scaling commutes with the composition (W' is linear in
        W, and D acts on input channels and kernel positions only), so
        composing here gives exactly the plain model's answer on those paths.
        """
        if self.D is not None:
            if self._recomposes(input, weight, bias):
                return self._recomposing_forward(input, weight, bias)
            weight = self.composed_weight() if weight is self.weight \
                else self._compose(weight)
        # nn.Conv2d._conv_forward handles padding_mode, unlike F.conv2d.
        return super()._conv_forward(input, weight, bias)

    def _recomposes(self, input: Tensor, weight: Tensor,
                    bias: Optional[Tensor]) -> bool:
        """Whether this forward goes through :class:`RecomposingConv2d`:
        autograd would keep W', and no tracer is recording the layer."""
        # Grad mode first (cheap; false in every eval forward), then
        # tracing: FX proxies cannot answer requires_grad.
        return (self.recompute_kernel and torch.is_grad_enabled()
                and not is_tracing()
                and any(t is not None and t.requires_grad
                        for t in (input, weight, self.D, bias))
                and self._conv_padding() is not None)

    def _conv_padding(self) -> Optional[Tuple[int, int]]:
        """The numeric padding :class:`RecomposingConv2d` convolves with, or
        None for an asymmetric 'same' (even kernel extent, rare): such a
        layer takes F.conv2d's own 'same' path and keeps W'."""
        if self.padding_mode != 'zeros' or self.padding == 'valid':
            return (0, 0)  # non-zero modes pad the input first
        if self.padding != 'same':
            return self.padding
        left_w, right_w, left_h, right_h = \
            self._reversed_padding_repeated_twice
        return (left_h, left_w) if (left_h, left_w) == (right_h, right_w) \
            else None

    def _recomposing_forward(self, input: Tensor, weight: Tensor,
                             bias: Optional[Tensor]) -> Tensor:
        padding = self._conv_padding()
        if self.padding_mode != 'zeros':
            input = F.pad(input, self._reversed_padding_repeated_twice,
                          mode=self.padding_mode)
        device_type = input.device.type
        autocast_dtype = (torch.get_autocast_dtype(device_type)
                          if torch.is_autocast_enabled(device_type) else None)
        return recomposing_conv2d(input, weight, self.D, self._identity, bias,
                                  self.kernel_size, self.stride, padding,
                                  self.dilation, self.groups, autocast_dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Load plain conv checkpoints too: a missing D means D = I.

        A plain ``(C_out, C_in/groups, M, N)`` weight loads into a
        ``D_mul > M*N`` layer as ``W`` padded with zeros, which composes back
        to the same kernel.
        """
        weight_key = prefix + 'weight'
        loaded_weight = state_dict.get(weight_key)
        if (self.D is not None and isinstance(loaded_weight, Tensor)
                and self.D_mul > self.D.shape[1]
                and loaded_weight.dim() == 4
                and loaded_weight.shape[2:] == self.kernel_size):
            # A plain kernel: W padded with zeros composes back to it.
            state_dict = dict(state_dict)
            state_dict[weight_key] = weight_for_kernel(loaded_weight,
                                                       self.D_mul)
        loaded_d = state_dict.get(prefix + 'D')
        if (self.D is not None and isinstance(loaded_d, Tensor)
                and loaded_d.shape != self.D.shape):
            # Loading would keep this layer's D and drop the trained one
            # (a non-strict load only warns): refuse, naming both.
            raise IncompatibleCheckpointError(
                f'{prefix}D: the checkpoint\'s D has shape '
                f'{tuple(loaded_d.shape)} but this layer\'s is '
                f'{tuple(self.D.shape)} (D_mul={self.D_mul}); '
                + self._d_mismatch_hint(tuple(loaded_d.shape)))
        loaded_hw = state_dict.get(prefix + 'kernel_hw')
        if 'kernel_hw' in self._buffers and loaded_hw is not None and not (
                isinstance(loaded_hw, Tensor) and loaded_hw.numel() == 2):
            raise IncompatibleCheckpointError(
                f'{prefix}kernel_hw: expected a tensor of 2 ints (M, N), but '
                f'the checkpoint holds {type(loaded_hw).__name__} '
                f'{loaded_hw!r:.60}')
        self._load_plain_or_doconv(state_dict, prefix, local_metadata, strict,
                                   missing_keys, unexpected_keys, error_msgs)
        if 'kernel_hw' in self._buffers and prefix + 'kernel_hw' in state_dict:
            loaded = tuple(state_dict[prefix + 'kernel_hw'].tolist())
            if loaded != self.kernel_size:
                error_msgs.append(
                    f'{prefix}kernel_hw: checkpoint kernel {loaded} does not '
                    f'match this layer\'s kernel_size {self.kernel_size}')

    def _d_mismatch_hint(self, loaded_shape: Tuple[int, ...]) -> str:
        """What to do about a checkpoint D of another shape."""
        fold = ("or fold the checkpoint (tools/model_converters/"
                "fold_checkpoint.py) to start from its W'")
        if len(loaded_shape) != 3 or loaded_shape[0] != self.in_channels:
            return f'it is not a D of this layer ({self.in_channels} inputs)'
        kernel_numel = self.D.shape[1]
        if loaded_shape[1] != kernel_numel:
            return (f'it belongs to a kernel of {loaded_shape[1]} positions, '
                    f'not this {self.kernel_size[0]}x{self.kernel_size[1]} '
                    f'kernel ({kernel_numel}); {fold}')
        if loaded_shape[2] < kernel_numel:
            return (f'its D_mul={loaded_shape[2]} is below M*N = '
                    f'{kernel_numel}, which no DO-Conv layer has: it is not '
                    'a DO-Conv checkpoint of this model')
        return f'build the model with D_mul={loaded_shape[2]}, {fold}'
