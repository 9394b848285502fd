"""An RPNHead whose 3x3 conv honours ``conv_cfg``.

mmdet 3.3's RPNHead builds its 3x3 conv as a hard-coded ``nn.Conv2d`` and
takes no ``conv_cfg``, so ``conv_cfg=dict(type='DOConv')`` cannot reach it.
This subclass builds the same layers under the same names through
``build_conv_layer``; with ``conv_cfg=None`` it is RPNHead, and a folded
state dict loads into a stock RPNHead with ``strict=True``
(:func:`mmdoconv.deploy.plain_config` maps the type back).
"""
from typing import Optional

from mmcv.cnn import ConvModule, build_conv_layer
from mmdet.models.dense_heads import RPNHead
from mmdet.registry import MODELS
from torch import nn


@MODELS.register_module()
class DOConvRPNHead(RPNHead):
    """RPNHead with ``conv_cfg`` for its 3x3 conv(s).

    Args:
        conv_cfg: Config of the 3x3 conv(s), e.g. ``dict(type='DOConv')``.
            The 1x1 classification and regression convs stay plain.
        **kwargs: As for ``mmdet.models.dense_heads.RPNHead``.
    """

    def __init__(self, *args, conv_cfg: Optional[dict] = None,
                 **kwargs) -> None:
        # _init_layers runs inside RPNHead.__init__ and needs conv_cfg.
        self.conv_cfg = conv_cfg
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()
        if self.num_convs > 1:
            self.rpn_conv = nn.Sequential(*[
                ConvModule(
                    self.in_channels if i == 0 else self.feat_channels,
                    self.feat_channels,
                    3,
                    padding=1,
                    conv_cfg=self.conv_cfg,
                    inplace=False) for i in range(self.num_convs)
            ])
        else:
            self.rpn_conv = build_conv_layer(
                self.conv_cfg, self.in_channels, self.feat_channels, 3,
                padding=1)
