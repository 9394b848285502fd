"""D's effect on W per kernel position (the quantity of paper Fig. 6)."""
from typing import Dict

import numpy as np
import torch
from torch import nn

from ..cnn.compose import compose_kernel
from ..cnn.doconv import DOConv2d


@torch.no_grad()
def kernel_change_maps(model: nn.Module, prefix: str = ''
                       ) -> Dict[str, np.ndarray]:
    """``H_mn = sum_i |W'_imn - W_imn|`` of every DO-Conv layer (paper §4.4).

    Args:
        model: A model with :class:`DOConv2d` layers (``D_mul == M*N``:
            otherwise W has no kernel positions to compare).
        prefix: Keep layers whose name starts with it (e.g. a stage).

    Returns:
        ``{layer name: (M, N) array}``.
    """
    maps = {}
    for name, module in model.named_modules():
        if not (isinstance(module, DOConv2d) and module.D is not None
                and name.startswith(prefix)
                and module.D_mul == module.D.shape[1]):
            continue
        # W' - W is the composition with D - I alone: computing it that way
        # avoids the cancellation of W' - W in float32 when D is small.
        no_identity = module.D.new_zeros(module.D.shape[1:])
        change = compose_kernel(module.weight, module.D, no_identity,
                                module.kernel_size, module.groups)
        maps[name] = change.abs().sum(dim=(0, 1)).cpu().numpy()
    return maps
