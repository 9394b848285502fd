"""mmpretrain ResNets with DO-Conv in chosen stages only (paper Table 6).

``conv_cfg`` reaches every conv of a ResNet.  The paper's ablation puts
DO-Conv in subsets of the stages instead: stage 0 is the stem, stages 1-4
are ``layer1``..``layer4``.  These backbones take ``doconv_stages`` and give
each stage its conv type; everything else is mmpretrain's ResNet / ResNetV1c,
with the same module names, so their checkpoints load into either.
"""
from typing import Optional, Sequence

from mmpretrain.models.backbones import ResNet, ResNetV1c
from mmpretrain.registry import MODELS

ALL_STAGES = (0, 1, 2, 3, 4)


class DOConvStagesMixin:
    """Use ``doconv_cfg`` for the stages in ``doconv_stages``, plain elsewhere.

    Args:
        doconv_stages: Stages with DO-Conv: 0 = stem, 1-4 = residual layers.
            Defaults to all.
        doconv_cfg: The conv config of those stages.
            Defaults to ``dict(type='DOConv')``.
    """

    def __init__(self, *args, doconv_stages: Sequence[int] = ALL_STAGES,
                 doconv_cfg: Optional[dict] = None, **kwargs) -> None:
        stages = tuple(doconv_stages)
        if not set(stages) <= set(ALL_STAGES):
            raise ValueError(f'doconv_stages must be a subset of {ALL_STAGES}'
                             f', but got {stages}')
        if kwargs.get('conv_cfg') is not None:
            raise ValueError('give the DO-Conv stages doconv_cfg; conv_cfg '
                             f'(got {kwargs["conv_cfg"]!r}) is the other '
                             'stages\' conv and must stay None')
        # Set before ResNet.__init__, which builds the stem and stages.
        self.doconv_stages = stages
        self.doconv_cfg = doconv_cfg or dict(type='DOConv')
        self._stage_being_built = 1
        super().__init__(*args, **kwargs)

    def _make_stem_layer(self, in_channels: int, stem_channels: int) -> None:
        plain_cfg = self.conv_cfg
        if 0 in self.doconv_stages:
            self.conv_cfg = self.doconv_cfg
        try:
            super()._make_stem_layer(in_channels, stem_channels)
        finally:
            self.conv_cfg = plain_cfg

    def make_res_layer(self, **kwargs):
        if self._stage_being_built in self.doconv_stages:
            kwargs['conv_cfg'] = self.doconv_cfg
        self._stage_being_built += 1
        return super().make_res_layer(**kwargs)


@MODELS.register_module()
class DOConvResNet(DOConvStagesMixin, ResNet):
    """mmpretrain's ResNet with DO-Conv in ``doconv_stages``."""


@MODELS.register_module()
class DOConvResNetV1c(DOConvStagesMixin, ResNetV1c):
    """mmpretrain's ResNetV1c with DO-Conv in ``doconv_stages``."""
