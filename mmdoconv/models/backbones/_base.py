"""What the three paper backbones share: freezing and ``norm_eval``, the way
mmpretrain's ResNet and MobileNetV2 do it."""
from typing import Iterable, Tuple

from mmpretrain.models.backbones.base_backbone import BaseBackbone
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


#: mmpretrain's default initialisation of its CNN backbones.
DEFAULT_INIT_CFG = [
    dict(type='Kaiming', layer=['Conv2d']),
    dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])
]


class FreezableBackbone(BaseBackbone):
    """A backbone whose stem and first ``frozen_stages`` stages can be frozen
    and whose BatchNorm layers can stay in eval mode (``norm_eval``).

    Subclasses call :meth:`set_stage_options`, return the stem's modules and the stages from
    :meth:`stem_modules` and :meth:`stage_modules`, and run the stages with
    :meth:`forward_stages`.
    """

    frozen_stages: int
    norm_eval: bool
    out_indices: tuple

    def set_stage_options(self, num_stages: int, out_indices,
                          frozen_stages: int, norm_eval: bool) -> None:
        """Check and keep the options every stage-wise backbone takes.

        Raises:
            ValueError: For an ``out_indices`` entry outside
                ``[-num_stages, num_stages)`` or ``frozen_stages`` outside
                ``[-1, num_stages]``.
        """
        self.out_indices = _check_out_indices(out_indices, num_stages)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], '
                             f'but got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

    def forward_stages(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Run the stages on the stem's output; the ``out_indices`` ones."""
        outs = []
        for index, stage in enumerate(self.stage_modules()):
            x = self.after_stage(index, stage(x))
            if index in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def after_stage(self, index: int, x: Tensor) -> Tensor:
        """What follows stage ``index`` (nothing by default)."""
        return x

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


def _check_out_indices(out_indices, num_stages: int) -> tuple:
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    indices = []
    for index in out_indices:
        if not -num_stages <= index < num_stages:
            raise ValueError(f'out_indices must be in [{-num_stages}, '
                             f'{num_stages}), but got {index}')
        indices.append(index % num_stages)
    return tuple(indices)
