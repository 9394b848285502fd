"""What the three paper backbones share: freezing and ``norm_eval``, the way
mmpretrain's ResNet and MobileNetV2 do it."""
from typing import Iterable

from mmpretrain.models.backbones.base_backbone import BaseBackbone
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class FreezableBackbone(BaseBackbone):
    """A backbone whose stem and first ``frozen_stages`` stages can be frozen
    and whose BatchNorm layers can stay in eval mode (``norm_eval``).

    Subclasses set ``self.frozen_stages`` and ``self.norm_eval`` and return
    the stem's modules and the stages from :meth:`stem_modules` and
    :meth:`stage_modules`.
    """

    frozen_stages: int
    norm_eval: bool

    def stem_modules(self) -> Iterable[nn.Module]:
        raise NotImplementedError

    def stage_modules(self) -> Iterable[nn.Module]:
        raise NotImplementedError

    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen += list(self.stem_modules())
        frozen += list(self.stage_modules())[:max(self.frozen_stages, 0)]
        for module in frozen:
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad = False

    def train(self, mode: bool = True) -> 'FreezableBackbone':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self


def check_out_indices(out_indices, num_stages: int) -> tuple:
    """``out_indices`` as a tuple of non-negative stage indices.

    Raises:
        ValueError: For an index outside ``[-num_stages, num_stages)``.
    """
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    indices = []
    for index in out_indices:
        if not -num_stages <= index < num_stages:
            raise ValueError(f'out_indices must be in [{-num_stages}, '
                             f'{num_stages}), but got {index}')
        indices.append(index % num_stages)
    return tuple(indices)


def check_frozen_stages(frozen_stages: int, num_stages: int) -> int:
    if not -1 <= frozen_stages <= num_stages:
        raise ValueError(f'frozen_stages must be in [-1, {num_stages}], but '
                         f'got {frozen_stages}')
    return frozen_stages
