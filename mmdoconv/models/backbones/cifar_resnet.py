"""He et al.'s CIFAR networks, the rows of the DO-Conv paper's Table 1:
ResNet-v1 (He et al., CVPR 2016, §4.2), the pre-activation ResNet-v2
(He et al., ECCV 2016) and Plain-20 (ResNet-v1-20 without shortcuts).

A 3x3 stem of 16 channels, then three stages at 32x32, 16x16 and 8x8 of
16 / 32 / 64 channels (basic blocks, depth 6n+2: 20, 56, 110) or bottlenecks
of 16 / 32 / 64 middle and 64 / 128 / 256 output channels (depth 9n+2: 164).
The first block of stages 2 and 3 has stride 2.

Shortcuts where the shape changes (the references differ):

- ResNet-v1 basic blocks: option A of He et al. 2016 (§4.2), the identity
  on every other pixel with zero channels added: no parameters, which is
  what the published counts (0.27 M for ResNet-20) are of;
- bottlenecks (ResNet-164) and ResNet-v2: a 1x1 projection, as in He et
  al.'s pre-activation code and the GluonCV CIFAR models the DO-Conv paper
  trained (their ResNet-164 count, 1.7 M, includes it).
"""
from typing import Optional, Sequence, Tuple

import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_conv_layer, build_norm_layer
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import Tensor, nn

from ._base import DEFAULT_INIT_CFG, FreezableBackbone
from .preact_resnet import PreActBasicBlock, PreActBottleneck

#: depth -> (bottleneck?, blocks per stage)
CIFAR_DEPTHS = {20: (False, 3), 56: (False, 9), 110: (False, 18),
                164: (True, 18)}


class CIFARBasicBlock(BaseModule):
    """conv3x3-BN-ReLU, conv3x3-BN, plus the option-A shortcut, ReLU; no
    shortcut at all when ``shortcut=False`` (the plain net)."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 shortcut: bool = True) -> None:
        super().__init__()
        layer = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, bias=False)
        self.conv1 = ConvModule(in_channels, out_channels, 3, stride=stride,
                                padding=1, **layer)
        self.conv2 = ConvModule(out_channels, out_channels, 3, padding=1,
                                act_cfg=None, **layer)
        self.shortcut, self.stride = shortcut, stride
        self.extra_channels = out_channels - in_channels
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        if self.shortcut:
            identity = x[:, :, ::self.stride, ::self.stride]
            if self.extra_channels:
                half = self.extra_channels // 2
                identity = F.pad(identity, (0, 0, 0, 0, half,
                                            self.extra_channels - half))
            out = out + identity
        return self.relu(out)


class CIFARBottleneck(BaseModule):
    """conv1x1-BN-ReLU, conv3x3 (strided)-BN-ReLU, conv1x1-BN, plus the
    shortcut (a 1x1 projection with BN where the shape changes), ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()
        mid_channels = out_channels // self.expansion
        layer = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, bias=False)
        self.conv1 = ConvModule(in_channels, mid_channels, 1, **layer)
        self.conv2 = ConvModule(mid_channels, mid_channels, 3, stride=stride,
                                padding=1, **layer)
        self.conv3 = ConvModule(mid_channels, out_channels, 1, act_cfg=None,
                                **layer)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvModule(in_channels, out_channels, 1,
                                         stride=stride, act_cfg=None,
                                         **layer)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class _CIFARNet(FreezableBackbone):
    """The stem and the three stages every CIFAR network here shares.

    Subclasses set :attr:`preact`, :attr:`depths`, :attr:`block_args` and
    :meth:`block_type`.
    """

    preact = False
    depths = tuple(CIFAR_DEPTHS)
    #: Extra arguments of every block (the plain net's ``shortcut=False``).
    block_args: dict = {}

    def __init__(self,
                 depth: int,
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (2, ),
                 frozen_stages: int = -1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False,
                 init_cfg=DEFAULT_INIT_CFG) -> None:
        super().__init__(init_cfg)
        if depth not in self.depths:
            raise KeyError(f'invalid depth {depth} for {type(self).__name__}'
                           f'; expected one of {list(self.depths)}')
        bottleneck, num_blocks = CIFAR_DEPTHS[depth]
        self.depth = depth
        self.set_stage_options(3, out_indices, frozen_stages, norm_eval)
        block = self.block_type(bottleneck)
        if self.preact:  # the first unit's BN-ReLU follows the stem
            self.stem = build_conv_layer(conv_cfg, in_channels, 16, 3,
                                         padding=1, bias=False)
        else:
            self.stem = ConvModule(in_channels, 16, 3, padding=1, bias=False,
                                   conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        channels = 16
        for index in range(3):
            out_channels = 16 * 2**index * block.expansion
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(block(channels, out_channels, stride, conv_cfg,
                                    norm_cfg, **self.block_args))
                channels = out_channels
            self.add_module(f'layer{index + 1}', nn.Sequential(*blocks))
        if self.preact:
            self.norm_out = build_norm_layer(norm_cfg, channels)[1]
            self.relu = nn.ReLU(inplace=True)
        self.feat_dim = channels
        self._freeze_stages()

    def block_type(self, bottleneck: bool) -> type:
        raise NotImplementedError

    def stem_modules(self):
        return [self.stem]

    def stage_modules(self):
        return [self.layer1, self.layer2, self.layer3]

    def after_stage(self, index: int, x: Tensor) -> Tensor:
        if self.preact and index == 2:
            return self.relu(self.norm_out(x))
        return x

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return self.forward_stages(self.stem(x))


_DOC_ARGS = """
    Module names: ``stem`` (the 3x3 conv; with BN-ReLU in ResNet-v1 and
    Plain), ``layer1``..``layer3`` (the stages: the paper's Table 6 stages
    0 = stem, 1-3 = layer1-layer3).

    Args:
        depth (int): 20, 56, 110 or 164.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (Sequence[int]): Stages whose outputs are returned.
            Defaults to ``(2, )``.
        frozen_stages (int): Freeze the stem (0) and stages up to this one;
            -1 freezes nothing. Defaults to -1.
        conv_cfg (dict, optional): Conv config of every conv.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        norm_eval (bool): Keep BatchNorm in eval mode while training.
        init_cfg (dict | list[dict], optional): Initialisation config.
"""


@MODELS.register_module()
class CIFARResNet(_CIFARNet):
    __doc__ = ("He et al.'s CIFAR ResNet-v1 (basic blocks with option-A "
               'shortcuts; ResNet-164 of bottlenecks).\n' + _DOC_ARGS)

    def block_type(self, bottleneck: bool) -> type:
        return CIFARBottleneck if bottleneck else CIFARBasicBlock


@MODELS.register_module()
class CIFARPreActResNet(_CIFARNet):
    __doc__ = ("He et al.'s pre-activation CIFAR ResNet-v2 (BN-ReLU-conv "
               'units, 1x1 projection shortcuts, a final BN-ReLU).\n'
               + _DOC_ARGS)

    preact = True

    def block_type(self, bottleneck: bool) -> type:
        return PreActBottleneck if bottleneck else PreActBasicBlock


@MODELS.register_module()
class CIFARPlainNet(_CIFARNet):
    __doc__ = ('Plain-20: CIFAR ResNet-v1-20 without its shortcuts.\n'
               + _DOC_ARGS.replace('20, 56, 110 or 164', '20'))

    depths = (20, )
    block_args = dict(shortcut=False)

    def block_type(self, bottleneck: bool) -> type:
        return CIFARBasicBlock
