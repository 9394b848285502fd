"""Load ImageNet-pretrained backbones into task models, folding when needed.

The paper's "backbone stage" is classification pre-training.  A backbone
pre-trained with DO-Conv reaches a detection or segmentation model in one of
two ways (paper Tables 4-5):

- *doconv-backbone*: folded into plain convs, then plain task training;
- *doconv-both*: loaded as it is, D and W, into DO-Conv layers.

``init_cfg=dict(type='PretrainedDOConv', checkpoint=..., prefix='backbone.')``
does both: it folds the checkpoint when the module it initialises has no
DO-Conv layer, and loads D and W otherwise.  A plain checkpoint loads into
either (a missing D means D = I).  mmpretrain's ResNetV1c stem keys are
renamed to mmseg's layout on the way.
"""
import logging
import re
from typing import Dict, Optional

from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS
from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict
from torch import nn

from ..cnn.doconv import DOConvLayer
from ..deploy.fold import fold_state_dict


_CONV_MODULE_STEM = re.compile(r'^stem\.(\d+)\.(conv|bn)\.(.+)$')


def align_stem_keys(state_dict: Dict, target_keys) -> Dict:
    """Rename a deep stem's keys between mmpretrain's and mmdet/mmseg's layout.

    mmpretrain's ResNetV1c builds its stem from ConvModules
    (``stem.<i>.conv`` / ``stem.<i>.bn``); mmdet's and mmseg's build a flat
    Sequential of conv, norm, ReLU (``stem.<3i>`` / ``stem.<3i+1>``).  Keys
    are renamed only when the target has the renamed key and not the
    original one.
    """
    target_keys = set(target_keys)
    aligned = {}
    for key, value in state_dict.items():
        match = _CONV_MODULE_STEM.match(key)
        if match and key not in target_keys:
            index, kind, rest = match.groups()
            flat = f'stem.{3 * int(index) + (kind == "bn")}.{rest}'
            if flat in target_keys:
                key = flat
        aligned[key] = value
    return aligned


@WEIGHT_INITIALIZERS.register_module(name='PretrainedDOConv')
class PretrainedDOConvInit(PretrainedInit):
    """Like mmengine's ``Pretrained``, folding DO-Conv weights for plain models.

    Args:
        checkpoint: Path of the checkpoint (mmengine, mmpretrain or a bare
            state dict).
        prefix: Keep only keys starting with this prefix, and strip it
            (e.g. ``'backbone.'`` for an mmpretrain classifier).
        map_location: As for ``torch.load``. Defaults to ``'cpu'``.
        fold: ``'auto'`` folds when the initialised module has no DO-Conv layer;
            True / False force it.
    """

    def __init__(self, checkpoint: str, prefix: Optional[str] = None,
                 map_location: str = 'cpu', fold='auto') -> None:
        super().__init__(checkpoint, prefix=prefix, map_location=map_location)
        if fold not in ('auto', True, False):
            raise ValueError(f"fold must be 'auto', True or False, but got "
                             f'{fold!r}')
        self.fold = fold

    def __call__(self, module: nn.Module) -> None:
        # Any scheme (local, http(s), torchvision://, ...): every one of
        # them loads through mmdoconv's safe loaders.
        checkpoint = CheckpointLoader.load_checkpoint(self.checkpoint,
                                                      self.map_location)
        state_dict = checkpoint.get('state_dict', checkpoint)
        if self.prefix:
            state_dict = {
                key[len(self.prefix):]: value
                for key, value in state_dict.items()
                if key.startswith(self.prefix)
            }
            if not state_dict:
                raise ValueError(f'no key of {self.checkpoint!r} starts with '
                                 f'prefix {self.prefix!r}')
        has_doconv = any(isinstance(m, DOConvLayer) for m in module.modules())
        fold = (not has_doconv) if self.fold == 'auto' else self.fold
        if fold:
            state_dict = fold_state_dict(state_dict)
        state_dict = align_stem_keys(state_dict, module.state_dict().keys())
        print_log(
            f'load {"folded " if fold else ""}{self.prefix or ""} weights '
            f'from {self.checkpoint}', 'current', logging.INFO)
        load_state_dict(module, state_dict, strict=False, logger='current')
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self) -> str:
        return f'{self.__class__.__name__}: load from {self.checkpoint}'
