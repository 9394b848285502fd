"""Folding DO-Conv into plain convolutions: whole models and state dicts.

Folding computes ``W' = D^T o W`` once (:mod:`mmdoconv.compose`) and leaves a
plain ``nn.Conv2d``, so a deployed model costs exactly what the plain model
costs and loads without mmdoconv.

Note:
    Fold before fusing conv and BN (``mmcv.cnn.fuse_conv_bn``): the fuser
    accepts any ``nn.Conv2d`` subclass and would fuse ``W`` instead of
    ``W'``.
"""
from collections import OrderedDict
from typing import List, Mapping, Tuple

import torch
from torch import Tensor, nn

from .compose import compose_kernel, doconv_identity
from .doconv import DOConv2d


def swap_in_folded(model: nn.Module) -> List[Tuple[nn.Module, str, DOConv2d]]:
    """Replace every :class:`DOConv2d` inside ``model`` by its folded conv.

    Returns:
        ``(parent, name, original layer)`` for each replacement, so that a
        caller (the fold hook) can put the originals back.
    """
    if isinstance(model, DOConv2d):
        raise TypeError('fold_doconv folds the DOConv2d layers inside a '
                        'model and cannot replace the model itself; call '
                        'DOConv2d.fold() or switch_to_deploy() on it instead')
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DOConv2d):
                setattr(parent, name, child.fold())
                swapped.append((parent, name, child))
    return swapped


def fold_doconv(model: nn.Module) -> int:
    """Replace every :class:`DOConv2d` inside ``model`` by its folded conv.

    Module names stay the same, so the folded model's state dict has the
    plain model's keys.  Folding a folded model is a no-op.

    Args:
        model: The model to fold in place.

    Returns:
        The number of layers replaced.

    Raises:
        TypeError: If ``model`` itself is a DOConv2d (a module cannot replace
            itself in its parent; use ``model.fold()``).
    """
    return len(swap_in_folded(model))


def count_doconv(model: nn.Module) -> int:
    """Number of :class:`DOConv2d` layers in ``model`` that still have a D."""
    return sum(
        isinstance(m, DOConv2d) and m.D is not None for m in model.modules())


def _is_doconv_entry(state_dict: Mapping[str, Tensor], key: str) -> bool:
    if not (key == 'D' or key.endswith('.D')):
        return False
    weight = state_dict.get(key[:-1] + 'weight')
    d = state_dict[key]
    return (isinstance(d, Tensor) and d.dim() == 3
            and isinstance(weight, Tensor) and weight.dim() in (3, 4))


@torch.no_grad()
def fold_state_dict(state_dict: Mapping[str, Tensor]) -> 'OrderedDict':
    """Fold the DO-Conv layers of a state dict without building the model.

    Every ``<prefix>.D`` with a sibling ``<prefix>.weight`` is composed into
    that weight; ``D`` and ``kernel_hw`` are dropped.  Keys, order and every
    other tensor are kept, so the result loads with ``strict=True`` into the
    same model built with plain convolutions.  The input is not modified.

    Args:
        state_dict: A model state dict (e.g. ``checkpoint['state_dict']``).

    Returns:
        A new state dict with plain conv weights.

    Raises:
        ValueError: If a DO-Conv entry's shapes are inconsistent.
    """
    folded_weights = {}
    dropped = set()
    for key in state_dict:
        if not _is_doconv_entry(state_dict, key):
            continue
        prefix = key[:-1]
        d, weight = state_dict[key], state_dict[prefix + 'weight']
        in_channels, kernel_numel, d_mul = d.shape
        if weight.dim() == 4:
            kernel_size = tuple(weight.shape[2:])
        elif prefix + 'kernel_hw' in state_dict:
            kernel_size = tuple(state_dict[prefix + 'kernel_hw'].tolist())
            dropped.add(prefix + 'kernel_hw')
        else:
            raise ValueError(
                f'{prefix}weight has shape {tuple(weight.shape)} (D_mul > '
                f'M*N) but {prefix}kernel_hw, which records (M, N), is '
                'missing from the state dict')
        in_per_group = weight.shape[1]
        if (kernel_size[0] * kernel_size[1] != kernel_numel
                or weight[0, 0].numel() != d_mul
                or in_per_group == 0 or in_channels % in_per_group):
            raise ValueError(
                f'inconsistent DO-Conv entry {prefix[:-1]!r}: D has shape '
                f'{tuple(d.shape)}, weight {tuple(weight.shape)}, kernel '
                f'{kernel_size}')
        groups = in_channels // in_per_group
        identity = doconv_identity(
            kernel_numel, d_mul, dtype=d.dtype, device=d.device)
        composed = compose_kernel(weight, d, identity, kernel_size, groups)
        folded_weights[prefix + 'weight'] = composed.to(weight.dtype)
        dropped.add(key)
    result = OrderedDict()
    for key, value in state_dict.items():
        if key not in dropped:
            result[key] = folded_weights.get(key, value)
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:
        result._metadata = metadata
    return result
