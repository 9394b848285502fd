"""Folding DO-Conv into plain convolutions: whole models and state dicts.

Folding computes ``W' = D^T o W`` once (:mod:`mmdoconv.cnn.compose`) and leaves a
plain ``nn.Conv2d``, so a deployed model costs exactly what the plain model
costs and loads without mmdoconv.

Note:
    Folding and fusing conv and BN (``mmcv.cnn.fuse_conv_bn``) commute: the
    fuser scales ``weight`` per output channel, and a DO-Conv layer composes
    ``D^T o (c W) = c W'`` (:meth:`DOConv2d._conv_forward`), so either order
    gives the same plain model (tests/test_conv_paths.py).
"""
import math
from collections import OrderedDict
from typing import List, Mapping, Tuple

import torch
from torch import Tensor, nn

from ..cnn.compose import compose_any_kernel, doconv_identity
from ..cnn.doconv import DOConvLayer


def swap_in_folded(
        model: nn.Module) -> List[Tuple[nn.Module, str, DOConvLayer]]:
    """Replace every DO-Conv layer (:class:`~mmdoconv.cnn.doconv.DOConvLayer`:
    2-D, 1-D, 3-D, transposed) inside ``model`` by its folded conv.

    Returns:
        ``(parent, name, original layer)`` for each replacement, so that a
        caller (the fold hook) can put the originals back.
    """
    if isinstance(model, DOConvLayer):
        raise TypeError('fold_doconv folds the DO-Conv layers inside a '
                        'model and cannot replace the model itself; call '
                        f'{type(model).__name__}.fold() or switch_to_deploy() '
                        'on it instead')
    swapped = []
    folded = {}  # a layer shared by several parents folds once, stays shared
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DOConvLayer):
                if id(child) not in folded:
                    folded[id(child)] = child.fold()
                setattr(parent, name, folded[id(child)])
                swapped.append((parent, name, child))
    return swapped


def fold_doconv(model: nn.Module) -> int:
    """Replace every DO-Conv layer inside ``model`` by its folded conv.

    Module names stay the same, so the folded model's state dict has the
    plain model's keys.  Folding a folded model is a no-op.

    Args:
        model: The model to fold in place.

    Returns:
        The number of layers replaced (a layer shared by several parents
        counts once).

    Raises:
        TypeError: If ``model`` itself is a DO-Conv layer (a module cannot
            replace itself in its parent; use ``model.fold()``).
    """
    return len({id(layer) for _, _, layer in swap_in_folded(model)})


def count_doconv(model: nn.Module) -> int:
    """Number of DO-Conv layers in ``model`` that still have a D."""
    return sum(isinstance(m, DOConvLayer) and m.D is not None
               for m in model.modules())


def _is_d_key(key: str) -> bool:
    return key == 'D' or key.endswith('.D')


def _kernel_size_of(state_dict: Mapping[str, Tensor], prefix: str,
                    weight: Tensor, kernel_numel: int) -> Tuple[int, int]:
    """(M, N) of a DO-Conv entry: from a 4-D weight, or its kernel_hw."""
    if weight.dim() == 4 and weight[0, 0].numel() == kernel_numel:
        return tuple(weight.shape[2:])  # D_mul == M*N: a plain kernel
    kernel_hw = state_dict.get(prefix + 'kernel_hw')
    if kernel_hw is None:
        raise ValueError(
            f'{prefix}weight has shape {tuple(weight.shape)} (D_mul > M*N) '
            f'but {prefix}kernel_hw, which records (M, N), is missing from '
            'the state dict')
    if not (isinstance(kernel_hw, Tensor) and not kernel_hw.is_floating_point()
            and not kernel_hw.is_complex() and kernel_hw.shape == (2, )
            and bool((kernel_hw > 0).all())):
        raise ValueError(
            f'{prefix}kernel_hw must be an integer tensor of two positive '
            f'entries (M, N), but got {kernel_hw!r}')
    kernel_size = tuple(int(v) for v in kernel_hw.tolist())
    if kernel_size[0] * kernel_size[1] != kernel_numel:
        raise ValueError(
            f'{prefix}kernel_hw says {kernel_size} but D has {kernel_numel} '
            'kernel positions')
    return kernel_size


def _check_entry(state_dict: Mapping[str, Tensor], key: str) -> Tuple[
        Tensor, Tensor, Tuple[int, int], int]:
    """Check one DO-Conv entry; return ``(D, W, (M, N), groups)``."""
    prefix = key[:-1]
    d, weight = state_dict[key], state_dict.get(prefix + 'weight')
    if not (isinstance(d, Tensor) and d.dim() == 3 and d.is_floating_point()):
        raise ValueError(
            f'{key} must be a 3-D floating-point tensor (C_in, M*N, D_mul), '
            f'but got {_describe(d)}')
    if not (isinstance(weight, Tensor) and weight.dim() in (3, 4)):
        raise ValueError(
            f'{key} needs {prefix}weight, a 3-D or 4-D tensor, but got '
            f'{_describe(weight)}')
    if weight.dtype != d.dtype or weight.device != d.device:
        raise ValueError(
            f'{prefix}weight ({weight.dtype}, {weight.device}) and {key} '
            f'({d.dtype}, {d.device}) must have the same dtype and device')
    in_channels, kernel_numel, d_mul = d.shape
    out_channels, in_per_group = weight.shape[:2]
    if min(weight.shape + d.shape) == 0:
        raise ValueError(
            f'inconsistent DO-Conv entry {prefix[:-1]!r}: D has shape '
            f'{tuple(d.shape)}, weight {tuple(weight.shape)}: a dimension is '
            '0')
    kernel_size = _kernel_size_of(state_dict, prefix, weight, kernel_numel)
    if (kernel_size[0] * kernel_size[1] != kernel_numel
            or weight[0, 0].numel() != d_mul or in_channels % in_per_group
            or out_channels % (in_channels // in_per_group)):
        raise ValueError(
            f'inconsistent DO-Conv entry {prefix[:-1]!r}: D has shape '
            f'{tuple(d.shape)}, weight {tuple(weight.shape)}, kernel '
            f'{kernel_size}; expected D (C_in, M*N, D_mul) and weight '
            '(C_out, C_in/groups, M, N) or (C_out, C_in/groups, 1, D_mul), '
            'with groups dividing C_in and C_out')
    return d, weight, kernel_size, in_channels // in_per_group


def _check_nd_entry(state_dict: Mapping[str, Tensor], key: str) -> Tuple[
        Tensor, Tensor, Tuple[int, ...], int, bool]:
    """Check the entry of a 1-D, 3-D or transposed DO-Conv layer
    (:mod:`mmdoconv.cnn.doconv_nd`: it records ``kernel_shape``, and
    ``transposed_kernel`` when transposed); return ``(D, W, kernel size,
    groups, transposed)``.  A transposed layer's groups do not enter its
    composition (each input channel composes its own block of W) and are
    returned as 1."""
    prefix = key[:-1]
    d, weight = state_dict[key], state_dict.get(prefix + 'weight')
    shape = state_dict[prefix + 'kernel_shape']
    transposed = state_dict.get(prefix + 'transposed_kernel')
    if not (isinstance(shape, Tensor) and shape.dim() == 1
            and 1 <= shape.numel() <= 3 and not shape.is_floating_point()
            and not shape.is_complex() and bool((shape > 0).all())):
        raise ValueError(
            f'{prefix}kernel_shape must be an integer tensor of 1 to 3 '
            f'positive extents, but got {_describe(shape)}')
    if transposed is not None and not (isinstance(transposed, Tensor)
                                       and transposed.numel() == 1):
        raise ValueError(f'{prefix}transposed_kernel must be a one-element '
                         f'tensor, but got {_describe(transposed)}')
    transposed = bool(transposed) if transposed is not None else False
    kernel_size = tuple(int(v) for v in shape.tolist())
    if not (isinstance(d, Tensor) and d.dim() == 3 and d.is_floating_point()):
        raise ValueError(
            f'{key} must be a 3-D floating-point tensor (C_in, K, D_mul), '
            f'but got {_describe(d)}')
    if not (isinstance(weight, Tensor)
            and weight.dim() == 2 + len(kernel_size)
            and weight.dtype == d.dtype and weight.device == d.device):
        raise ValueError(
            f'{key} needs {prefix}weight, a {2 + len(kernel_size)}-D tensor '
            f'of D\'s dtype and device, but got {_describe(weight)}')
    in_channels, kernel_numel, d_mul = d.shape
    first, second = weight.shape[:2]
    inputs_ok = (first == in_channels if transposed else
                 second > 0 and in_channels % second == 0
                 and first % (in_channels // second) == 0)
    if (math.prod(kernel_size) != kernel_numel or min(weight.shape) == 0
            or weight[0, 0].numel() != d_mul or not inputs_ok):
        layout = ('(C_in, C_out/groups, ...)' if transposed else
                  '(C_out, C_in/groups, ...)')
        raise ValueError(
            f'inconsistent DO-Conv entry {prefix[:-1]!r}: D has shape '
            f'{tuple(d.shape)}, weight {tuple(weight.shape)}, kernel '
            f'{kernel_size}{" (transposed)" if transposed else ""}; '
            f'expected D (C_in, K, D_mul) and weight {layout} holding K or '
            'D_mul entries per channel pair')
    groups = 1 if transposed else in_channels // second
    return d, weight, kernel_size, groups, transposed


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f'a {value.dim()}-D {value.dtype} tensor {tuple(value.shape)}'
    return f'{type(value).__name__} {value!r}'[:80]


@torch.no_grad()
def fold_for_plain_convs(model: nn.Module, state_dict: Mapping[str, Tensor]
                         ) -> Tuple[Mapping[str, Tensor], List[str]]:
    """Fold the DO-Conv entries of ``state_dict`` whose layer in ``model``
    is a plain conv; the rest is returned as it is.

    Loading an unfolded DO-Conv checkpoint into a plain model would otherwise
    keep ``W`` and drop ``D`` (only an "unexpected key" warning), and the
    model would compute with ``W`` instead of ``W'``.

    Returns:
        The state dict to load (the input itself when nothing folds) and the
        names of the folded layers.
    """
    modules = dict(model.named_modules())
    prefixes = []
    for key in state_dict:
        if isinstance(key, str) and _is_d_key(key):
            module = modules.get(key[:-2] if key != 'D' else '')
            if isinstance(module, nn.modules.conv._ConvNd) and getattr(
                    module, 'D', None) is None:
                prefixes.append(key[:-1])
    if not prefixes:
        return state_dict, []
    own_keys = {prefix + name for prefix in prefixes
                for name in ('D', 'weight') + DOConvLayer._LAYOUT_BUFFERS}
    folded = fold_state_dict(
        {k: v for k, v in state_dict.items() if k in own_keys})
    result = OrderedDict((key, folded[key] if key in own_keys else value)
                         for key, value in state_dict.items()
                         if key not in own_keys or key in folded)
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:
        result._metadata = metadata
    return result, [prefix[:-1] for prefix in prefixes]


def fold_state_dict(state_dict: Mapping[str, Tensor]) -> 'OrderedDict':
    """Fold the DO-Conv layers of a state dict without building the model.

    Every ``<prefix>.D`` is composed into its sibling ``<prefix>.weight``;
    ``D`` and ``kernel_hw`` are dropped.  Keys, order and every other tensor
    are kept, so the result loads with ``strict=True`` into the same model
    built with plain convolutions.  The input is not modified.

    Note:
        ``kernel_hw`` is checked against D (two positive ints whose product
        is ``M*N``); a ``kernel_hw`` that swaps M and N cannot be told apart
        in a state dict, and shows up when the result is loaded strictly.

    Args:
        state_dict: A model state dict (e.g. ``checkpoint['state_dict']``).

    Returns:
        A new state dict with plain conv weights.

    Raises:
        TypeError: If ``state_dict`` is not a mapping.
        ValueError: If a ``D`` entry is malformed, naming the key.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f'fold_state_dict expects a state dict (a mapping of '
                        f'names to tensors), but got {_describe(state_dict)}')
    folded_weights = {}
    dropped = set()
    for key in state_dict:
        if not isinstance(key, str) or not _is_d_key(key):
            continue
        prefix = key[:-1]
        if prefix + 'kernel_shape' in state_dict:
            d, weight, kernel_size, groups, transposed = _check_nd_entry(
                state_dict, key)
        else:
            d, weight, kernel_size, groups = _check_entry(state_dict, key)
            transposed = False
        identity = doconv_identity(
            d.shape[1], d.shape[2], dtype=d.dtype, device=d.device)
        folded_weights[prefix + 'weight'] = compose_any_kernel(
            weight, d, identity, kernel_size, groups, transposed)
        dropped.update([key] + [prefix + name
                                for name in DOConvLayer._LAYOUT_BUFFERS])
    result = OrderedDict()
    for key, value in state_dict.items():
        if key not in dropped:
            result[key] = folded_weights.get(key, value)
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:
        result._metadata = metadata
    return result
