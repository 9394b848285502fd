"""Turn the non-pointwise convolutions of any ``nn.Module`` into DO-Conv.

The paper's protocol is to "merely replace the non-pointwise convolutional
layers with DO-Conv" (§4).  OpenMMLab modules that take ``conv_cfg`` can be
configured that way, but many heads build ``nn.Conv2d`` directly; converting
the built model reaches every conv, in any model (torchvision, timm, your
own).
"""
import fnmatch
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch
from mmengine.logging import print_log
from torch import nn

from .compose import doconv_identity, weight_for_kernel
from .doconv import (DOConv2d, check_d_init, check_recompute_kernel,
                     resolve_d_mul)

Patterns = Union[None, str, Sequence[str]]
#: The reason a conv of another kind (transposed, 1-D, 3-D) is left plain.
UNSUPPORTED_KIND = 'no DO-Conv layer for {} yet'
#: The parameters a conversion may add whatever the model's size (64 MiB in
#: float32): small and narrow models' D can outgrow their W.
DEFAULT_MAX_D_PARAMS = 2**24


@dataclass
class ConversionReport:
    """What :func:`convert_to_doconv` did.

    Attributes:
        converted: Names of the convs that became :class:`DOConv2d`.
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


def added_parameters(conv: nn.Conv2d, d_mul: int) -> int:
    """Parameters a conversion of ``conv`` with ``d_mul`` adds: D
    ``(C_in, M*N, D_mul)``, and W's growth from ``M*N`` to ``D_mul``
    entries per (output, input) pair."""
    kernel_numel = conv.kernel_size[0] * conv.kernel_size[1]
    return conv.in_channels * kernel_numel * d_mul + conv.out_channels * (
        conv.in_channels // conv.groups) * (d_mul - kernel_numel)


def _parametrization(conv: nn.Conv2d) -> Optional[str]:
    """Why a conv's weight is not a plain parameter, or None.

    torch's ``parametrize`` API (``parametrizations.weight_norm``,
    ``spectral_norm``, orthogonal ...) and the older hook-based
    ``weight_norm`` / ``spectral_norm`` compute ``weight`` from other
    tensors on every forward.  A DO-Conv layer made from such a conv would
    train a plain W and silently drop the parametrization, so these convs
    stay plain, named in the report.
    """
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm
    if parametrize.is_parametrized(conv):
        kinds = sorted({type(p).__name__.lstrip('_')
                        for plist in conv.parametrizations.values()
                        for p in plist})
        return f'parametrized weight ({", ".join(kinds)})'
    hooks = sorted({type(hook).__name__
                    for hook in conv._forward_pre_hooks.values()
                    if isinstance(hook, (WeightNorm, SpectralNorm))})
    if hooks:
        return f'parametrized weight ({", ".join(hooks)} hook)'
    return None


def _same_computation_subclasses() -> tuple:
    """``nn.Conv2d`` subclasses whose own ``forward`` computes what
    ``nn.Conv2d`` computes on the torch versions mmdoconv supports."""
    try:
        # mmcv's wrapper (MaskIoUHead, pixel decoders) only special-cases
        # empty inputs on torch < 1.4, then calls nn.Conv2d.forward.
        from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d
    except ImportError:
        return ()
    return (MMCVConv2d, )


def _doconv_twins() -> Dict[type, type]:
    """``nn.Conv2d`` subclasses with their own forward that have a DO-Conv
    twin computing the same with D (the twin folds back to the class)."""
    try:
        from mmcv.cnn.bricks import Conv2dAdaptivePadding
    except ImportError:
        return {}
    from .adaptive_padding import DOConv2dAdaptivePadding
    return {Conv2dAdaptivePadding: DOConv2dAdaptivePadding}


def _has_own_forward(conv: nn.Conv2d) -> bool:
    """A subclass that changes how the conv computes (DCN, ConvWS, SAC...)."""
    cls = type(conv)
    if cls in _same_computation_subclasses() or cls in _doconv_twins():
        return False
    return any(getattr(cls, name) is not getattr(nn.Conv2d, name)
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


@torch.no_grad()
def doconv_like(conv: nn.Conv2d, D_mul: Union[None, int, str] = None,
                D_init: str = 'identity',
                recompute_kernel: bool = True) -> DOConv2d:
    """A :class:`DOConv2d` with ``conv``'s hyper-parameters, W and bias
    (its twin for mmcv's ``Conv2dAdaptivePadding``, which pads as it does).

    With ``D_init='identity'`` (D = I) it computes exactly what ``conv``
    computes; for ``D_mul > M*N`` W is padded with zeros, which composes back
    to the same kernel.  Device, dtype and ``requires_grad`` are kept; D
    is trainable exactly when W is.
    """
    layer = nn.utils.skip_init(
        _doconv_twins().get(type(conv), DOConv2d), conv.in_channels, conv.out_channels, conv.kernel_size,
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
        groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode, device=conv.weight.device,
        dtype=conv.weight.dtype, D_mul=D_mul, D_init=D_init,
        recompute_kernel=recompute_kernel)
    # skip_init leaves every tensor uninitialised: fill all of them.
    kernel_numel = conv.kernel_size[0] * conv.kernel_size[1]
    layer.weight.copy_(weight_for_kernel(conv.weight, layer.D_mul))
    layer.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        layer.bias.copy_(conv.bias)
        layer.bias.requires_grad_(conv.bias.requires_grad)
    layer._identity.copy_(doconv_identity(
        kernel_numel, layer.D_mul, dtype=layer.D.dtype,
        device=layer.D.device))
    if 'kernel_hw' in layer._buffers:
        layer.kernel_hw.copy_(torch.tensor(layer.kernel_size))
    layer.reset_d()
    # A frozen conv (e.g. a backbone's frozen_stages) stays frozen, D too.
    layer.D.requires_grad_(conv.weight.requires_grad)
    layer.train(conv.training)
    return layer


def convert_to_doconv(model: nn.Module,
                      include: Patterns = None,
                      exclude: Patterns = None,
                      D_mul: Union[None, int, str] = None,
                      D_init: str = 'identity',
                      recompute_kernel: bool = True,
                      max_d_params: Optional[int] = None) -> ConversionReport:
    """Replace every non-pointwise ``nn.Conv2d`` in ``model`` by DO-Conv.

    Converted: ``nn.Conv2d`` itself, subclasses that only change how the
    layer is built (they inherit ``forward`` and ``_conv_forward``), mmcv's
    ``Conv2d`` wrapper (its forward differs only on torch < 1.4), and mmcv's
    ``Conv2dAdaptivePadding`` (to a twin that pads as it does).  Left
    alone and reported: transposed, 1-D and 3-D convs (no DO-Conv layer for
    them yet), 1x1 kernels (no spatial patch to over-parameterize,
    paper §4), convs with their own forward (DCN, ConvWS, SAC, ...), convs
    whose weight is parametrized (weight norm, spectral norm: see
    :func:`_parametrization`), layers that are DO-Conv already (so
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

    Returns:
        A :class:`ConversionReport`.

    Raises:
        ValueError: If an ``include`` / ``exclude`` pattern matches no module
            (naming it), ``D_mul`` / ``D_init`` is invalid, or the conversion
            would add more than ``max_d_params`` parameters (naming the
            largest layers and how to leave them out).
        TypeError: If ``model`` is itself a conv (it cannot replace itself).
    """
    if isinstance(model, nn.Conv2d):
        raise TypeError('convert_to_doconv converts the convs inside a model '
                        'and cannot replace the model itself; wrap it in an '
                        'nn.Sequential')
    check_d_init(D_init)
    check_recompute_kernel(recompute_kernel)
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
    convs = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Conv2d)]
    # Transposed, 1-D and 3-D convs have no DO-Conv layer yet: named, so a
    # report never reads as if a model had none.
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(
                module, nn.Conv2d) and math.prod(module.kernel_size) > 1:
            report.skipped[name] = UNSUPPORTED_KIND.format(
                type(module).__name__)
    for name, child in convs:
        reason = None
        if isinstance(child, DOConv2d):
            reason = 'already DO-Conv'
        elif child.kernel_size == (1, 1):
            reason = 'pointwise (1x1)'
        elif _parametrization(child) is not None:
            reason = _parametrization(child)
        elif _has_own_forward(child):
            reason = f'own forward ({type(child).__name__})'
        elif includes and not _matches(name, includes):
            reason = 'not included'
        elif _matches(name, excludes):
            reason = 'excluded'
        if reason is not None:
            report.skipped[name] = reason
            continue
        try:  # every conv is checked before the first one is replaced
            d_mul = resolve_d_mul(D_mul, child.kernel_size)
        except ValueError as error:
            raise ValueError(f'{name}: {error}') from None
        report.converted.append(name)
        added[name] = added_parameters(child, d_mul)
    report.added_params = sum(added.values())
    _check_added_parameters(model, added, max_d_params)
    # A conv shared by several parents (RTMDet's heads share their convs
    # across pyramid levels) is one module under several names:
    # named_modules() lists it once, and every reference must get the same
    # DOConv2d, or the sharing silently comes apart.
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
