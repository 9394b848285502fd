"""mmdoconv: DO-Conv (arXiv 2006.12030) for OpenMMLab.

Importing this package registers the ``DOConv`` conv type (and the 1-D,
3-D and transposed layers) in mmengine's root
MODELS registry (so ``conv_cfg=dict(type='DOConv')`` works in mmdet, mmseg
and mmpretrain configs), the fold hook, the CPU runtime helpers, and safe
loaders for every checkpoint scheme mmengine knows.

Layout: :mod:`mmdoconv.cnn` (the layer and its maths),
:mod:`mmdoconv.deploy` (folding, plain configs, ONNX),
:mod:`mmdoconv.engine` (hook, CPU AMP and DDP), :mod:`mmdoconv.models`
(OpenMMLab module variants and weight initialisers), :mod:`mmdoconv.utils`
(checkpoint safety, converters, benchmark and tool helpers).
"""
import importlib.util

from .cnn import (ConversionReport, DOConv, DOConv1d, DOConv2d, DOConv3d,
                  DOConvLayer, DOConvTranspose1d, DOConvTranspose2d,
                  DOConvTranspose3d, compose_kernel, convert_to_doconv,
                  doconv_identity)
from .cnn.doconv import IncompatibleCheckpointError
from .deploy import count_doconv, fold_doconv, fold_state_dict, \
    swap_in_folded
from .engine import (CPUAwareDistributedDataParallel, CPUBf16OptimWrapper,
                     DOConvFoldHook, DOConvRunner, apply_doconv_switch)
from .engine.fold_on_load import register_fold_on_load
from .models.pretrained import PretrainedDOConvInit
from .utils import (InvalidCheckpointError, UnsafeCheckpointError,
                    convert_reference_state_dict, load_checkpoint_file,
                    load_checkpoint_url, register_safe_loaders,
                    save_folded_checkpoint)
from .version import __version__

# OpenMMLab modules with a DO-Conv variant, registered when installed.
if importlib.util.find_spec('mmpretrain') is not None:
    from . import datasets  # noqa: F401
    from .models import backbones  # noqa: F401

# Every checkpoint scheme mmengine knows loads with weights_only=True and
# mmengine's numpy / HistoryBuffer data rebuilt by checked stand-ins.
register_safe_loaders()
# mmengine's load_state_dict folds the D of layers that are plain convs in
# the model being loaded (an unfolded checkpoint into a plain model).
register_fold_on_load()

__all__ = [
    'DOConv2d', 'DOConv', 'DOConvLayer', 'DOConv1d', 'DOConv3d',
    'DOConvTranspose1d', 'DOConvTranspose2d', 'DOConvTranspose3d',
    'compose_kernel', 'doconv_identity',
    'convert_to_doconv', 'ConversionReport',
    'fold_doconv', 'fold_state_dict', 'count_doconv', 'swap_in_folded',
    'DOConvFoldHook', 'DOConvRunner', 'apply_doconv_switch',
    'CPUBf16OptimWrapper', 'PretrainedDOConvInit',
    'CPUAwareDistributedDataParallel', 'convert_reference_state_dict',
    'UnsafeCheckpointError', 'InvalidCheckpointError',
    'IncompatibleCheckpointError', 'load_checkpoint_file',
    'load_checkpoint_url', 'register_safe_loaders', 'save_folded_checkpoint',
    '__version__'
]
