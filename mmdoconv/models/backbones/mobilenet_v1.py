"""MobileNet v1 (Howard et al., "MobileNets", 2017, Table 1), the MobileNet
v1 row of the DO-Conv paper's Table 3: a 3x3 stem and 13 depthwise-separable
blocks (depthwise 3x3 conv-BN-ReLU, pointwise 1x1 conv-BN-ReLU)."""
from typing import Optional, Sequence, Tuple

from mmcv.cnn import ConvModule
from mmpretrain.registry import MODELS
from torch import Tensor, nn

from ._base import DEFAULT_INIT_CFG, FreezableBackbone


def _make_divisible(value: float, divisor: int = 8) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


@MODELS.register_module()
class MobileNetV1(FreezableBackbone):
    """MobileNet v1.

    Blocks (out channels, stride of the depthwise conv) after the 32-channel
    stride-2 stem: (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    5 x (512, 1), (1024, 2), (1024, 1).

    Args:
        widen_factor (float): Width multiplier alpha. Defaults to 1.0.
        out_indices (Sequence[int]): Blocks (0..12) whose outputs are
            returned. Defaults to ``(12, )``.
        frozen_stages (int): Freeze the stem (0) and blocks up to this one.
        conv_cfg (dict, optional): Conv config of every conv.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to ``dict(type='ReLU')``.
        norm_eval (bool): Keep BatchNorm in eval mode while training.
        init_cfg (dict | list[dict], optional): Initialisation config.
    """

    arch_settings = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1),
                     (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
                     (512, 1), (1024, 2), (1024, 1)]

    def __init__(self,
                 widen_factor: float = 1.0,
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (12, ),
                 frozen_stages: int = -1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 norm_eval: bool = False,
                 init_cfg=DEFAULT_INIT_CFG) -> None:
        super().__init__(init_cfg)
        if not widen_factor > 0:
            raise ValueError(
                f'widen_factor must be positive, but got {widen_factor}')
        num_blocks = len(self.arch_settings)
        self.set_stage_options(num_blocks, out_indices, frozen_stages, norm_eval)
        layer = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                     bias=False)
        channels = _make_divisible(32 * widen_factor)
        self.conv1 = ConvModule(in_channels, channels, 3, stride=2, padding=1,
                                **layer)
        self.layers = nn.ModuleList()
        for out_channels, stride in self.arch_settings:
            out_channels = _make_divisible(out_channels * widen_factor)
            self.layers.append(nn.Sequential(
                ConvModule(channels, channels, 3, stride=stride, padding=1,
                           groups=channels, **layer),
                ConvModule(channels, out_channels, 1, **layer)))
            channels = out_channels
        self.feat_dim = channels
        self._freeze_stages()

    def stem_modules(self):
        return [self.conv1]

    def stage_modules(self):
        return list(self.layers)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return self.forward_stages(self.conv1(x))
