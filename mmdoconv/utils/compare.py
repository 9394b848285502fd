"""Comparing model outputs: nested tuples, lists and dicts of tensors."""
from typing import Any, List

import numpy as np
import torch
from torch import Tensor


def flatten_tensors(outputs: Any) -> List[Tensor]:
    """The tensors of a nested tuple / list / dict output, in order."""
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for value in outputs.values() for t in flatten_tensors(value)]
    if isinstance(outputs, (list, tuple)):
        return [t for value in outputs for t in flatten_tensors(value)]
    return []


def max_abs_difference(first: Any, second: Any) -> float:
    """Largest ``|a - b|`` over the matching tensors (or numpy arrays) of two
    nested outputs; 0 when they hold only empty tensors.

    Raises:
        ValueError: If the outputs hold different numbers of tensors, or a
            pair differs in shape: they are not outputs of the same model.
    """
    def as_tensors(outputs):
        if isinstance(outputs, (list, tuple)) and all(
                isinstance(o, np.ndarray) for o in outputs):
            return [torch.from_numpy(o) for o in outputs]
        return flatten_tensors(outputs)

    firsts, seconds = as_tensors(first), as_tensors(second)
    if len(firsts) != len(seconds):
        raise ValueError(f'the outputs hold {len(firsts)} and {len(seconds)} '
                         'tensors')
    differences = [0.0]
    for index, (a, b) in enumerate(zip(firsts, seconds)):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f'output {index} has shape {tuple(a.shape)} '
                             f'against {tuple(b.shape)}')
        if a.numel():
            differences.append(
                (a.detach().double() - b.detach().double()).abs().max()
                .item())
    return max(differences)
