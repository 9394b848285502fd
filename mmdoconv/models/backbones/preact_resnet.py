"""Pre-activation ResNet (ResNet-v2; He et al., "Identity Mappings in Deep
Residual Networks", ECCV 2016), the ResNet-v2 rows of the DO-Conv paper's
Table 2.

Each residual unit is BN-ReLU-conv (pre-activation); a projection shortcut
takes the pre-activated input, and the last stage's output goes through a
final BN-ReLU.  The stride of a bottleneck is on its 3x3 conv, as in the
GluonCV models the paper trained.  The conv and FC weights are those of
ResNet-v1 of the same depth; only the BatchNorm layers move.
"""
from typing import Optional, Sequence, Tuple

from mmcv.cnn import build_conv_layer, build_norm_layer
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import Tensor, nn

from ._base import DEFAULT_INIT_CFG, FreezableBackbone


class PreActBasicBlock(BaseModule):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        self.norm1 = build_norm_layer(norm_cfg, in_channels)[1]
        self.conv1 = build_conv_layer(conv_cfg, in_channels, out_channels, 3,
                                      stride=stride, padding=1, bias=False)
        self.norm2 = build_norm_layer(norm_cfg, out_channels)[1]
        self.conv2 = build_conv_layer(conv_cfg, out_channels, out_channels, 3,
                                      padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride,
                                      conv_cfg)

    def forward(self, x: Tensor) -> Tensor:
        preact = self.relu(self.norm1(x))
        shortcut = x if self.downsample is None else self.downsample(preact)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.norm2(out)))
        return out + shortcut


class PreActBottleneck(BaseModule):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (strided), BN-ReLU-conv1x1, plus the
    shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        mid_channels = out_channels // self.expansion
        self.norm1 = build_norm_layer(norm_cfg, in_channels)[1]
        self.conv1 = build_conv_layer(conv_cfg, in_channels, mid_channels, 1,
                                      bias=False)
        self.norm2 = build_norm_layer(norm_cfg, mid_channels)[1]
        self.conv2 = build_conv_layer(conv_cfg, mid_channels, mid_channels, 3,
                                      stride=stride, padding=1, bias=False)
        self.norm3 = build_norm_layer(norm_cfg, mid_channels)[1]
        self.conv3 = build_conv_layer(conv_cfg, mid_channels, out_channels, 1,
                                      bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride,
                                      conv_cfg)

    def forward(self, x: Tensor) -> Tensor:
        preact = self.relu(self.norm1(x))
        shortcut = x if self.downsample is None else self.downsample(preact)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.norm2(out)))
        out = self.conv3(self.relu(self.norm3(out)))
        return out + shortcut


def _projection(in_channels: int, out_channels: int, stride: int,
                conv_cfg: Optional[dict]) -> Optional[nn.Module]:
    if stride == 1 and in_channels == out_channels:
        return None
    return build_conv_layer(conv_cfg, in_channels, out_channels, 1,
                            stride=stride, bias=False)


@MODELS.register_module()
class PreActResNet(FreezableBackbone):
    """Pre-activation ResNet (ResNet-v2) at depth 18, 34, 50, 101 or 152.

    Module names follow mmpretrain's ResNet (``conv1``, ``norm1``,
    ``layer1``..``layer4``), plus ``norm_out``, the final BN of the last
    stage.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        in_channels (int): Input image channels. Defaults to 3.
        base_channels (int): Stem and first-stage width. Defaults to 64.
        out_indices (Sequence[int]): Stages whose outputs are returned; the
            last stage's output is after the final BN-ReLU, earlier ones are
            the raw residual sums. Defaults to ``(3, )``.
        frozen_stages (int): Freeze the stem (0) and stages up to this one;
            -1 freezes nothing. Defaults to -1.
        conv_cfg (dict, optional): Conv config of every conv.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        norm_eval (bool): Keep BatchNorm in eval mode while training.
        init_cfg (dict | list[dict], optional): Initialisation config.
    """

    arch_settings = {
        18: (PreActBasicBlock, (2, 2, 2, 2)),
        34: (PreActBasicBlock, (3, 4, 6, 3)),
        50: (PreActBottleneck, (3, 4, 6, 3)),
        101: (PreActBottleneck, (3, 4, 23, 3)),
        152: (PreActBottleneck, (3, 8, 36, 3)),
    }

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
            raise KeyError(f'invalid depth {depth} for PreActResNet; '
                           f'expected one of {sorted(self.arch_settings)}')
        block, stage_blocks = self.arch_settings[depth]
        self.depth = depth
        self.set_stage_options(4, out_indices, frozen_stages, norm_eval)
        # Stem as in ResNet-v1: conv7x7-BN-ReLU, max pool.
        self.conv1 = build_conv_layer(conv_cfg, in_channels, base_channels, 7,
                                      stride=2, padding=3, bias=False)
        self.norm1 = build_norm_layer(norm_cfg, base_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = base_channels
        for index, num_blocks in enumerate(stage_blocks):
            out_channels = base_channels * 2**index * block.expansion
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(block(channels, out_channels, stride, conv_cfg,
                                    norm_cfg))
                channels = out_channels
            self.add_module(f'layer{index + 1}', nn.Sequential(*blocks))
        self.norm_out = build_norm_layer(norm_cfg, channels)[1]
        self.feat_dim = channels
        self._freeze_stages()

    def stem_modules(self):
        return [self.conv1, self.norm1]

    def stage_modules(self):
        return [getattr(self, f'layer{i}') for i in range(1, 5)]

    def after_stage(self, index: int, x: Tensor) -> Tensor:
        # Pre-activation units leave their sum un-normalised: the last
        # stage's output gets the final BN-ReLU.
        return self.relu(self.norm_out(x)) if index == 3 else x

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return self.forward_stages(
            self.maxpool(self.relu(self.norm1(self.conv1(x)))))
