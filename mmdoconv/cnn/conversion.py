"""Turn the non-pointwise convolutions of any ``nn.Module`` into DO-Conv.

The paper's protocol is to "merely replace the non-pointwise convolutional
layers with DO-Conv" (§4).  OpenMMLab modules that take ``conv_cfg`` can be
configured that way, but many heads build ``nn.Conv2d`` directly; converting
the built model reaches every conv, in any model (torchvision, timm, your
own).
"""
import contextlib
import fnmatch
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import nn

from .compose import doconv_identity, weight_for_kernel
from .doconv import (DOConv2d, DOConvLayer, check_d_init,
                     check_recompute_kernel, resolve_d_mul)
from .doconv_nd import DOCONV_LAYERS, resolve_d_mul_nd

Patterns = Union[None, str, Sequence[str]]
#: The conv kinds the switch converts (``kinds=`` names them), each the
#: ``nn`` class a conv is an instance of.
CONV_KINDS = {
    'Conv1d': nn.Conv1d,
    'Conv2d': nn.Conv2d,
    'Conv3d': nn.Conv3d,
    'ConvTranspose1d': nn.ConvTranspose1d,
    'ConvTranspose2d': nn.ConvTranspose2d,
    'ConvTranspose3d': nn.ConvTranspose3d,
}
#: The reason a conv of no kind above (a direct ``_ConvNd`` subclass) is
#: left plain.
UNSUPPORTED_KIND = 'no DO-Conv layer for {} yet'
#: The parameters a conversion may add whatever the model's size (64 MiB in
#: float32): small and narrow models' D can outgrow their W.
DEFAULT_MAX_D_PARAMS = 2**24


@dataclass
class ConversionReport:
    """What :func:`convert_to_doconv` did.

    Attributes:
        converted: Names of the convs that became DO-Conv layers.
        skipped: ``{name: reason}`` of the convs left as they are.
        added_params: Parameters the conversion adds (D, and W's padding
            for ``D_mul > M*N``).
    """
    converted: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    added_params: int = 0

    def __str__(self) -> str:
        reasons: Dict[str, int] = {}
        for reason in self.skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        left = ', '.join(f'{count} {reason}' for reason, count in
                         sorted(reasons.items())) or 'none'
        added = f' (+{self.added_params:,} parameters)' \
            if self.converted else ''
        return (f'converted {len(self.converted)} convs to DO-Conv{added}; '
                f'left plain: {left}')


def added_parameters(conv: nn.modules.conv._ConvNd, d_mul: int) -> int:
    """Parameters a conversion of ``conv`` with ``d_mul`` adds: D
    ``(C_in, K, D_mul)`` for the kernel's ``K`` positions, and W's growth
    from ``K`` to ``D_mul`` entries per pair of its first two dimensions."""
    kernel_numel = math.prod(conv.kernel_size)
    with _parametrizations_in_eval(conv):
        pairs = conv.weight.shape[0] * conv.weight.shape[1]
    return conv.in_channels * kernel_numel * d_mul + pairs * (
        d_mul - kernel_numel)


def conv_kind(module: nn.Module) -> Optional[str]:
    """The name in :data:`CONV_KINDS` of the ``nn`` conv class ``module``
    is an instance of, or None."""
    for name, base in CONV_KINDS.items():
        if isinstance(module, base):
            return name
    return None


def _parametrization_names(conv: nn.Module) -> str:
    from torch.nn.utils import parametrize
    return ', '.join(sorted({type(p).__name__.lstrip('_')
                             for plist in conv.parametrizations.values()
                             for p in plist})) \
        if parametrize.is_parametrized(conv) else ''


def _hook_parametrization(conv: nn.Module) -> Optional[str]:
    """Why a conv whose weight the older hook-based ``weight_norm`` /
    ``spectral_norm`` computes stays plain, or None.

    The hooks recompute ``weight`` as a plain attribute before every
    forward; a DO-Conv layer made from such a conv would train a plain W
    and silently drop them.  torch's ``parametrize`` API (what
    ``torch.nn.utils.parametrizations`` uses) is moved onto the DO-Conv
    layer's W instead (:func:`_transfer_parametrizations`).
    """
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm
    hooks = sorted({type(hook).__name__
                    for hook in conv._forward_pre_hooks.values()
                    if isinstance(hook, (WeightNorm, SpectralNorm))})
    if hooks:
        return (f'parametrized weight ({", ".join(hooks)} hook; the '
                'torch.nn.utils.parametrizations form converts)')
    return None


@contextlib.contextmanager
def _parametrizations_in_eval(conv: nn.Module) -> Iterator[None]:
    """Hold ``conv``'s parametrizations in eval mode inside the block.

    Reading ``conv.weight`` runs them; in training mode spectral norm then
    takes a power-iteration step and changes its ``u``/``v``, so the
    converted model would no longer compute what the model computed.
    """
    modes = {module: module.training
             for plist in getattr(conv, 'parametrizations', {}).values()
             for module in plist}
    for module in modes:
        module.train(False)
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.train(mode)


def _weight_requires_grad(conv: nn.Module) -> bool:
    """Whether ``conv``'s W trains: for a parametrized weight, whether a
    tensor its parametrization reads does (``conv.weight`` computed under
    ``no_grad`` never requires grad)."""
    parametrizations = getattr(conv, 'parametrizations', None)
    if parametrizations is not None and 'weight' in parametrizations:
        return any(p.requires_grad
                   for p in parametrizations['weight'].parameters())
    return conv.weight.requires_grad


def _transfer_parametrizations(conv: nn.Module, layer: nn.Module) -> None:
    """Move ``conv``'s parametrizations (weight norm, spectral norm,
    orthogonal ...) and their original tensors onto ``layer``: its W is then
    what the parametrization computes, and D composes with it.

    Registering runs each parametrization once, in the host's training mode
    (torch sets it to the host's): the layer is in eval mode meanwhile, so
    spectral norm takes no power-iteration step; the caller sets the
    layer's mode afterwards.
    """
    from torch.nn.utils import parametrize
    layer.train(False)
    parametrize.transfer_parametrizations_and_params(conv, layer)


def _same_computation_subclasses() -> tuple:
    """``nn`` conv subclasses whose own ``forward`` computes what their
    ``nn`` class computes on the torch versions mmdoconv supports."""
    try:
        # mmcv's wrappers (MaskIoUHead, pixel decoders, mask heads' 'deconv')
        # only special-case empty inputs on torch < 1.4, then call the nn
        # class's forward.
        from mmcv.cnn.bricks import wrappers
    except ImportError:
        return ()
    return (wrappers.Conv2d, wrappers.Conv3d, wrappers.ConvTranspose2d,
            wrappers.ConvTranspose3d)


def _doconv_twins() -> Dict[type, type]:
    """``nn.Conv2d`` subclasses with their own forward that have a DO-Conv
    twin computing the same with D (the twin folds back to the class)."""
    twins = {}
    try:
        from mmcv.cnn.bricks import Conv2dAdaptivePadding
    except ImportError:
        pass
    else:
        from .adaptive_padding import DOConv2dAdaptivePadding
        twins[Conv2dAdaptivePadding] = DOConv2dAdaptivePadding
    try:
        from mmcv.ops import MaskedConv2d
    except ImportError:  # mmcv without its compiled ops
        pass
    else:
        from .masked_conv import DOMaskedConv2d
        twins[MaskedConv2d] = DOMaskedConv2d
    return twins


def _has_own_forward(conv: nn.modules.conv._ConvNd, kind: str) -> bool:
    """A subclass that changes how the conv computes (DCN, ConvWS, SAC...)."""
    cls = type(conv)
    if cls in _same_computation_subclasses() or cls in _doconv_twins():
        return False
    base = CONV_KINDS[kind]
    return any(getattr(cls, name, None) is not getattr(base, name, None)
               for name in ('forward', '_conv_forward'))


def _as_patterns(patterns: Patterns, argument: str) -> List[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f'{argument} must be module-name patterns (str), '
                        f'but got {patterns!r}')
    return list(patterns)


def _matches(name: str, patterns: List[str]) -> List[str]:
    """The patterns that select ``name``: the module or one of its parents."""
    parts = name.split('.')
    prefixes = ['.'.join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [p for p in patterns
            if any(fnmatch.fnmatchcase(prefix, p) for prefix in prefixes)]


def _doconv_class(conv: nn.modules.conv._ConvNd) -> type:
    twin = _doconv_twins().get(type(conv))
    if twin is not None:
        return twin
    kind = CONV_KINDS[conv_kind(conv)]
    return DOConv2d if kind is nn.Conv2d else DOCONV_LAYERS[kind]


def _resolve_d_mul(d_mul: Union[None, int, str],
                   kernel_size: Tuple[int, ...]) -> int:
    return resolve_d_mul(d_mul, kernel_size) if len(kernel_size) == 2 \
        else resolve_d_mul_nd(d_mul, kernel_size)


def doconv_like(conv: nn.modules.conv._ConvNd,
                D_mul: Union[None, int, str] = None,
                D_init: str = 'identity',
                recompute_kernel: bool = True) -> DOConvLayer:
    """The DO-Conv layer of ``conv``'s kind (:class:`DOConv2d`, its twin for
    mmcv's ``Conv2dAdaptivePadding``, which pads as it does, or a layer of
    :mod:`~mmdoconv.cnn.doconv_nd`) with ``conv``'s hyper-parameters, W and
    bias, and its parametrizations (weight norm ...) on W.

    With ``D_init='identity'`` (D = I) it computes exactly what ``conv``
    computes; for ``D_mul > K`` W is padded with zeros, which composes back
    to the same kernel.  Device, dtype and ``requires_grad`` are kept; D
    is trainable exactly when W is.
    """
    with _parametrizations_in_eval(conv):
        return _doconv_like(conv, D_mul, D_init, recompute_kernel)


@torch.no_grad()
def _doconv_like(conv: nn.modules.conv._ConvNd,
                 D_mul: Union[None, int, str], D_init: str,
                 recompute_kernel: bool) -> DOConvLayer:
    arguments = dict(
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
        groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode, device=conv.weight.device,
        dtype=conv.weight.dtype, D_mul=D_mul, D_init=D_init,
        recompute_kernel=recompute_kernel)
    if conv.transposed:
        arguments['output_padding'] = conv.output_padding
    layer = nn.utils.skip_init(_doconv_class(conv), conv.in_channels,
                               conv.out_channels, conv.kernel_size,
                               **arguments)
    # skip_init leaves every tensor uninitialised: fill all of them.
    kernel_numel = math.prod(conv.kernel_size)
    rows = conv.weight.reshape(*conv.weight.shape[:2], 1, kernel_numel)
    layer.weight.copy_(weight_for_kernel(rows, layer.D_mul).reshape(
        layer.weight.shape))
    trainable = _weight_requires_grad(conv)
    layer.weight.requires_grad_(trainable)
    if conv.bias is not None:
        layer.bias.copy_(conv.bias)
        layer.bias.requires_grad_(conv.bias.requires_grad)
    layer._identity.copy_(doconv_identity(
        kernel_numel, layer.D_mul, dtype=layer.D.dtype,
        device=layer.D.device))
    for name, value in (('kernel_hw', layer.kernel_size),
                        ('kernel_shape', layer.kernel_size),
                        ('transposed_kernel', True)):
        if name in layer._buffers:
            layer._buffers[name].copy_(torch.tensor(value))
    layer.reset_d()
    if _parametrization_names(conv):
        _transfer_parametrizations(conv, layer)
    # A frozen conv (e.g. a backbone's frozen_stages) stays frozen, D too.
    layer.D.requires_grad_(trainable)
    layer.train(conv.training)
    return layer


def convert_to_doconv(model: nn.Module,
                      include: Patterns = None,
                      exclude: Patterns = None,
                      D_mul: Union[None, int, str] = None,
                      D_init: str = 'identity',
                      recompute_kernel: bool = True,
                      max_d_params: Optional[int] = None,
                      kinds: Optional[Sequence[str]] = None
                      ) -> ConversionReport:
    """Replace every non-pointwise conv in ``model`` by DO-Conv.

    Converted, of every kind in :data:`CONV_KINDS` (2-D, 1-D, 3-D and
    transposed convs; ``kinds`` narrows them): the ``nn`` class itself,
    subclasses that only change how the layer is built (they inherit
    ``forward`` and ``_conv_forward``), mmcv's wrappers (``Conv2d``,
    ``Conv3d``, ``ConvTranspose2d/3d``: their forwards differ only on torch
    < 1.4), and mmcv's ``Conv2dAdaptivePadding`` (to a twin that pads as it
    does), and mmcv's ``MaskedConv2d`` (GA-RetinaNet; to a twin that masks
    as it does).  A conv parametrized through torch's ``parametrize`` API (weight
    norm, spectral norm, orthogonal ...) keeps its parametrization on the
    DO-Conv layer's W (W' = D^T o parametrization(...)).  Left alone and
    reported: kernels of one position (1x1: no spatial patch to
    over-parameterize, paper §4), convs with their own forward (DCN, ConvWS,
    SAC ...), convs parametrized by the older hooks (see
    :func:`_hook_parametrization`) or with ``D_mul > K`` (W's shape would
    change under the parametrization), layers that are DO-Conv already (so
    converting twice is a no-op), and convs outside ``include`` or inside
    ``exclude``.

    Conversion is all or nothing: every conv is checked, and the parameters
    D would add counted, before anything is allocated or replaced; on any
    error the model is as it was.

    Module names do not change, so the state dict has the plain keys plus
    ``D`` (and ``kernel_hw`` for ``D_mul > M*N``), and plain checkpoints load
    into the converted model (missing D = identity).

    Args:
        model: The model to convert in place.
        include: Module-name patterns (``fnmatch``, e.g. ``'backbone.layer*'``)
            a conv or one of its parents must match to be converted; all
            convs when None.
        exclude: Module-name patterns that keep a conv plain.
        D_mul: As for :class:`DOConv2d` (an int or a rule name such as
            ``'MxN'``), applied per kernel size.
        D_init: ``'identity'`` (the converted model computes exactly what the
            model computed) or ``'random'`` (paper Table 7).
        recompute_kernel: As for :class:`DOConv2d`: compose ``W'`` again in
            the backward (less memory, the default) or keep it (faster).
        max_d_params: The most parameters the conversion may add; by default
            the model's own parameter count or :data:`DEFAULT_MAX_D_PARAMS`,
            whichever is larger (a 31x31 depthwise layer's D is 961 times its
            W: RepLKNet-31B would gain about 5 G parameters).
        kinds: Names from :data:`CONV_KINDS` (``'Conv2d'``,
            ``'ConvTranspose2d'``, ``'Conv3d'`` ...) of the conv kinds to
            convert; every kind when None.  Convs of the other kinds stay
            plain, reported as ``kind not converted (<kind>)``.

    Returns:
        A :class:`ConversionReport`.

    Raises:
        ValueError: If an ``include`` / ``exclude`` pattern matches no module
            (naming it), ``kinds`` names an unknown kind, ``D_mul`` /
            ``D_init`` is invalid, or the conversion
            would add more than ``max_d_params`` parameters (naming the
            largest layers and how to leave them out).
        TypeError: If ``model`` is itself a conv (it cannot replace itself).
    """
    if isinstance(model, nn.modules.conv._ConvNd):
        raise TypeError('convert_to_doconv converts the convs inside a model '
                        'and cannot replace the model itself; wrap it in an '
                        'nn.Sequential')
    check_d_init(D_init)
    check_recompute_kernel(recompute_kernel)
    wanted_kinds = _check_kinds(kinds)
    includes = _as_patterns(include, 'include')
    excludes = _as_patterns(exclude, 'exclude')
    names = [name for name, _ in model.named_modules() if name]
    for argument, patterns in (('include', includes), ('exclude', excludes)):
        for pattern in patterns:
            if not any(_matches(name, [pattern]) for name in names):
                raise ValueError(f'{argument} pattern {pattern!r} matches no '
                                 'module of the model')
    report = ConversionReport()
    added: Dict[str, int] = {}
    for name, child in model.named_modules():
        if not isinstance(child, nn.modules.conv._ConvNd):
            continue
        kind = conv_kind(child)
        reason = None
        if isinstance(child, DOConvLayer):
            reason = 'already DO-Conv'
        elif math.prod(child.kernel_size) == 1:
            reason = 'pointwise ({})'.format('x'.join('1' * len(
                child.kernel_size)))
        elif kind is None:
            reason = UNSUPPORTED_KIND.format(type(child).__name__)
        elif kind not in wanted_kinds:
            reason = f'kind not converted ({kind})'
        elif (hooked := _hook_parametrization(child)) is not None:
            reason = hooked
        elif _has_own_forward(child, kind):
            reason = f'own forward ({type(child).__name__})'
        elif includes and not _matches(name, includes):
            reason = 'not included'
        elif _matches(name, excludes):
            reason = 'excluded'
        if reason is not None:
            report.skipped[name] = reason
            continue
        try:  # every conv is checked before the first one is replaced
            d_mul = _resolve_d_mul(D_mul, child.kernel_size)
        except ValueError as error:
            raise ValueError(f'{name}: {error}') from None
        parametrized = _parametrization_names(child)
        if parametrized and d_mul != math.prod(child.kernel_size):
            # A D_mul > K layer's W has another shape than the tensors the
            # parametrization was made for.
            report.skipped[name] = (
                f'parametrized weight ({parametrized}) '
                f'with D_mul={d_mul} > {math.prod(child.kernel_size)}')
            continue
        report.converted.append(name)
        added[name] = added_parameters(child, d_mul)
    report.added_params = sum(added.values())
    _check_added_parameters(model, added, max_d_params)
    # A conv shared by several parents (RTMDet's heads share their convs
    # across pyramid levels) is one module under several names:
    # named_modules() lists it once, and every reference must get the same
    # DO-Conv layer, or the sharing silently comes apart.
    replacements = {}
    for name in report.converted:
        conv = model.get_submodule(name)
        replacements[id(conv)] = doconv_like(conv, D_mul, D_init,
                                             recompute_kernel)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    if not report.converted:
        print_log(f'convert_to_doconv: nothing to convert ({report})',
                  'current', logging.WARNING)
    return report


def _check_kinds(kinds: Optional[Sequence[str]]) -> List[str]:
    """The checked ``kinds`` option: every kind when None."""
    if kinds is None:
        return list(CONV_KINDS)
    if isinstance(kinds, str):
        kinds = [kinds]
    unknown = [kind for kind in kinds if kind not in CONV_KINDS]
    if unknown or not isinstance(kinds, Sequence):
        raise ValueError(f'kinds must name conv kinds out of '
                         f'{list(CONV_KINDS)}, but got {kinds!r}')
    return list(kinds)


def _check_added_parameters(model: nn.Module, added: Dict[str, int],
                            max_d_params: Optional[int]) -> None:
    """Refuse a conversion that adds more than ``max_d_params`` parameters
    (see :func:`convert_to_doconv`), before anything is allocated."""
    if max_d_params is None:
        max_d_params = max(DEFAULT_MAX_D_PARAMS,
                           sum(p.numel() for p in model.parameters()))
    elif not isinstance(max_d_params, int) or max_d_params < 0:
        raise ValueError(f'max_d_params must be an int >= 0, but got '
                         f'{max_d_params!r}')
    total = sum(added.values())
    if total <= max_d_params:
        return
    largest = sorted(added.items(), key=lambda item: -item[1])[:3]
    listed = ', '.join(f'{name} (+{count:,}, {_float32_size(count)})'
                       for name, count in largest)
    raise ValueError(
        f'converting would add {total:,} parameters ({_float32_size(total)}) '
        f'in {len(added)} convs, more than max_d_params='
        f'{max_d_params:,} (by default the model\'s own parameter count or '
        f'{DEFAULT_MAX_D_PARAMS:,}, whichever is larger); '
        f'the largest: {listed}. Leave them plain with exclude=[...] (e.g. '
        f'exclude={[name for name, _ in largest]!r}) or raise max_d_params; '
        'the model was not changed')


def _float32_size(count: int) -> str:
    size = 4 * count / 2**20
    return f'{size / 1024:.1f} GiB in float32' if size >= 1024 else \
        f'{size:.1f} MiB in float32'
