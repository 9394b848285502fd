"""Deploy artefacts: a plain config and a folded checkpoint, no mmdoconv needed.

:func:`plain_config` turns a DO-Conv config into the same model with plain
convolutions; :func:`fold_checkpoint` writes that config next to the folded
checkpoint, so stock mmdet / mmseg / mmpretrain code loads the pair with
``strict=True``.
"""
import copy
import inspect
import os.path as osp
from typing import Any, Tuple

from mmengine.config import Config
from torch import nn

from ..cnn.doconv import DOConv2d

from ..utils.checkpoint import (load_checkpoint_file, model_state_dict_of,
                                save_folded_checkpoint)

#: Registry names of the DO-Conv layers and the plain type each folds to
#: (mmcv's registered name; mmcv has none for ``nn.ConvTranspose1d``, which
#: mmdoconv registers as ``ConvTranspose1d``: a plain config with it needs
#: ``mmdoconv`` imported or that one registration of your own).
PLAIN_TYPES = {
    'DOConv': 'Conv2d',
    'DOConv2d': 'Conv2d',
    'DOConv1d': 'Conv1d',
    'DOConv3d': 'Conv3d',
    'DOConvTranspose1d': 'ConvTranspose1d',
    'DOConvTranspose2d': 'deconv',
    'DOConvTranspose3d': 'deconv3d',
}
DOCONV_TYPES = tuple(PLAIN_TYPES)
#: Keys of a DO-Conv layer config that a plain conv does not take: its type
#: and every argument DOConv2d adds to nn.Conv2d's.
_DOCONV_KEYS = ('type', ) + tuple(
    name for name in inspect.signature(DOConv2d).parameters
    if name not in inspect.signature(nn.Conv2d).parameters)
_PLUGIN = 'mmdoconv'
_HOOKS = ('DOConvFoldHook', )


def _type_name(value: Any) -> Any:
    return getattr(value, '__name__', value)


def _strip_doconv(node: Any) -> Any:
    if isinstance(node, dict):
        type_name = _type_name(node.get('type'))
        if type_name in DOCONV_TYPES:
            rest = {k: v for k, v in node.items() if k not in _DOCONV_KEYS}
            # A bare 2-D conv_cfg becomes None (mmcv's default plain conv);
            # anything else becomes mmcv's registered plain type.
            if not rest and PLAIN_TYPES[type_name] == 'Conv2d':
                return None
            return dict(type=PLAIN_TYPES[type_name], **rest)
        return {key: _strip_doconv(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_strip_doconv(value) for value in node)
    return node


def plain_config(cfg: Config) -> Config:
    """The same config with DO-Conv replaced by plain convolutions.

    The conversion switch (``runner_type='DOConvRunner'`` and its ``doconv``
    options) goes, ``conv_cfg=dict(type='DOConv', ...)`` becomes ``None``,
    mmdoconv leaves ``custom_imports`` and ``DOConvFoldHook`` leaves
    ``custom_hooks``.  The input is not modified.
    """
    data = _strip_doconv(copy.deepcopy(cfg.to_dict()))
    if data.get('runner_type') == 'DOConvRunner':
        del data['runner_type']
    data.pop('doconv', None)
    imports = data.get('custom_imports')
    if imports:
        names = [n for n in imports.get('imports', []) if n != _PLUGIN
                 and not str(n).startswith(_PLUGIN + '.')]
        if names:
            imports['imports'] = names
        else:
            data.pop('custom_imports')
    if data.get('custom_hooks'):
        data['custom_hooks'] = [
            h for h in data['custom_hooks']
            if _type_name(h.get('type')) not in _HOOKS
        ]
    return Config(data)


def fold_checkpoint(cfg: Config,
                    checkpoint_path: str,
                    out_dir: str,
                    config_name: str,
                    overwrite: bool = False) -> Tuple[str, str]:
    """Write ``<checkpoint>_folded.pth`` and ``<config>_plain.py`` to out_dir.

    Args:
        cfg: The DO-Conv config the checkpoint was trained with.
        checkpoint_path: The DO-Conv checkpoint.
        out_dir: Output folder (created if needed).
        config_name: File stem for the plain config.
        overwrite: Replace existing output files instead of refusing.

    Returns:
        Paths of the written checkpoint and config.

    Raises:
        FileExistsError: If an output exists and ``overwrite`` is False, or
            an output would replace the input checkpoint.
    """
    stem = osp.splitext(osp.basename(checkpoint_path))[0]
    out_checkpoint = osp.join(out_dir, f'{stem}_folded.pth')
    out_config = osp.join(out_dir, f'{config_name}_plain.py')
    if osp.abspath(out_checkpoint) == osp.abspath(checkpoint_path):
        raise FileExistsError(
            f'{out_checkpoint!r} would overwrite the input checkpoint')
    for path in (out_checkpoint, out_config):
        if osp.exists(path) and not overwrite:
            raise FileExistsError(
                f'{path!r} exists; pass --overwrite to replace it')
    plain = plain_config(cfg)
    plain.load_from = osp.abspath(out_checkpoint)
    checkpoint = load_checkpoint_file(checkpoint_path)
    model_state_dict_of(checkpoint, checkpoint_path)  # a clear error if not
    save_folded_checkpoint(checkpoint, out_checkpoint,
                           meta=dict(cfg=plain.pretty_text))
    plain.dump(out_config)
    return out_checkpoint, out_config
