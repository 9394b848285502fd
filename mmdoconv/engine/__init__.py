"""mmengine pieces: the fold hook and the CPU runtime helpers."""
from .amp import CPUBf16OptimWrapper
from .dist import CPUAwareDistributedDataParallel
from .fold_hook import DOConvFoldHook
from .runner import DOConvRunner, apply_doconv_switch

__all__ = [
    'CPUBf16OptimWrapper', 'CPUAwareDistributedDataParallel', 'DOConvFoldHook',
    'DOConvRunner', 'apply_doconv_switch'
]
