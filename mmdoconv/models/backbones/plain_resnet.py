"""Plain networks: ResNet-18/34 without the shortcuts (He et al., CVPR 2016,
Fig. 3 middle), the Plain-18 row of the DO-Conv paper's Table 2."""
from typing import Optional, Sequence, Tuple

from mmcv.cnn import ConvModule
from mmpretrain.registry import MODELS
from torch import Tensor, nn

from ._base import DEFAULT_INIT_CFG, FreezableBackbone


@MODELS.register_module()
class PlainResNet(FreezableBackbone):
    """ResNet-18 or -34 with every shortcut removed: a stack of 3x3
    conv-BN-ReLU layers (the first of each stage after the first strided).
    With no shortcut there is no projection either, so a plain net has the
    ResNet's weights minus its three 1x1 downsample convs.

    Module names: ``conv1`` / ``norm1`` (stem), ``layer1``..``layer4`` of
    blocks with ``conv1`` and ``conv2`` (ConvModules, each conv-BN-ReLU).

    Args:
        depth (int): 18 or 34.
        in_channels (int): Input image channels. Defaults to 3.
        base_channels (int): Stem and first-stage width. Defaults to 64.
        out_indices (Sequence[int]): Stages whose outputs are returned.
        frozen_stages (int): Freeze the stem (0) and stages up to this one.
        conv_cfg (dict, optional): Conv config of every conv.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        norm_eval (bool): Keep BatchNorm in eval mode while training.
        init_cfg (dict | list[dict], optional): Initialisation config.
    """

    arch_settings = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

    def __init__(self,
                 depth: int,
                 in_channels: int = 3,
                 base_channels: int = 64,
                 out_indices: Sequence[int] = (3, ),
                 frozen_stages: int = -1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False,
                 init_cfg=DEFAULT_INIT_CFG) -> None:
        super().__init__(init_cfg)
        if depth not in self.arch_settings:
            raise KeyError(f'invalid depth {depth} for PlainResNet; expected '
                           f'one of {sorted(self.arch_settings)}')
        self.depth = depth
        self.set_stage_options(4, out_indices, frozen_stages, norm_eval)
        layer = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, bias=False)
        self.stem = ConvModule(in_channels, base_channels, 7, stride=2,
                               padding=3, **layer)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = base_channels
        for index, num_blocks in enumerate(self.arch_settings[depth]):
            out_channels = base_channels * 2**index
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(nn.Sequential(
                    ConvModule(channels, out_channels, 3, stride=stride,
                               padding=1, **layer),
                    ConvModule(out_channels, out_channels, 3, padding=1,
                               **layer)))
                channels = out_channels
            self.add_module(f'layer{index + 1}', nn.Sequential(*blocks))
        self.feat_dim = channels
        self._freeze_stages()

    def stem_modules(self):
        return [self.stem]

    def stage_modules(self):
        return [getattr(self, f'layer{i}') for i in range(1, 5)]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return self.forward_stages(self.maxpool(self.stem(x)))
