"""Registers DO-Conv as an mmcv conv type in mmengine's root MODELS registry.

``DOConv`` / ``DOConv2d`` for 2-D convs (``conv_cfg``), ``DOConv1d`` and
``DOConv3d`` (``conv_cfg``, as mmcv's ``Conv1d`` / ``Conv3d``), and
``DOConvTranspose1d/2d/3d`` (``upsample_cfg``, as mmcv's ``deconv`` /
``deconv3d``).

Child registries (mmdet, mmseg, mmpretrain) look names up in their parent, so
``conv_cfg=dict(type='DOConv')`` works in every OpenMMLab scope once
``mmdoconv`` is imported (e.g. through ``custom_imports``).
"""
from typing import Union

from mmengine.registry import MODELS
from torch import nn
from torch.nn.modules.utils import _pair

from .doconv import (DOConv2d, check_d_init, check_recompute_kernel,
                     resolve_d_mul)
from .doconv_nd import (DOConv1d, DOConv3d, DOConvTranspose1d,
                        DOConvTranspose2d, DOConvTranspose3d)


class DOConv(DOConv2d):
    """The layer behind ``conv_cfg=dict(type='DOConv', ...)``.

    The paper replaces only non-pointwise convolutions (§4): a 1x1 kernel has
    no spatial patch for the depthwise kernel, so for it constructing this
    class returns a plain ``nn.Conv2d``.  OpenMMLab backbones pass one
    ``conv_cfg`` to every conv, 1x1 included, so this is where that rule has
    to live.  It is a class (not a builder function), so every entry of the
    registry is a type, as mmcv's own code and tests expect.

    Args:
        in_channels, out_channels, kernel_size, *args, **kwargs: As for
            ``nn.Conv2d``.
        D_mul: Depth multiplier, ``>= M*N`` (default ``M*N``), or a rule name
            (see :func:`~mmdoconv.cnn.doconv.resolve_d_mul`); checked for 1x1
            kernels too.
        D_init: ``'identity'`` or ``'random'`` (see :class:`DOConv2d`);
            checked for 1x1 kernels too.
        recompute_kernel: See :class:`DOConv2d`; checked for 1x1 kernels
            too.

    Returns:
        A :class:`DOConv` (a :class:`DOConv2d`), or an ``nn.Conv2d`` for a
        1x1 kernel.
    """

    def __new__(cls, *args, **kwargs) -> nn.Conv2d:
        if not args and not kwargs:  # copy.deepcopy and pickle
            return super().__new__(cls)
        return _new_doconv(cls, *args, **kwargs)


def _new_doconv(cls: type,
                in_channels: int,
                out_channels: int,
                kernel_size: Union[int, tuple],
                *args,
                D_mul: Union[None, int, str] = None,
                D_init: str = 'identity',
                recompute_kernel: bool = True,
                **kwargs) -> nn.Conv2d:
    resolve_d_mul(D_mul, kernel_size)
    check_d_init(D_init)
    check_recompute_kernel(recompute_kernel)
    if _pair(kernel_size) == (1, 1):
        # Not an instance of cls, so Python skips DOConv.__init__.
        return nn.Conv2d(in_channels, out_channels, kernel_size, *args,
                         **kwargs)
    return super(DOConv, cls).__new__(cls)


MODELS.register_module(name='DOConv', module=DOConv)
# The class itself, for configs that want a DOConv2d even for 1x1 kernels.
MODELS.register_module(name='DOConv2d', module=DOConv2d)
for _layer in (DOConv1d, DOConv3d, DOConvTranspose1d, DOConvTranspose2d,
               DOConvTranspose3d):
    MODELS.register_module(module=_layer)
# The plain type DOConvTranspose1d folds to (deploy.plain_config): mmcv
# registers 'deconv' (2-D) and 'deconv3d' but no 1-D transposed conv.
if 'ConvTranspose1d' not in MODELS.module_dict:
    MODELS.register_module(name='ConvTranspose1d', module=nn.ConvTranspose1d)
