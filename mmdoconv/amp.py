"""``--amp`` for the tools: fp16 AMP on GPUs, bf16 autocast on CPU.

mmengine's AmpOptimWrapper asserts a CUDA/NPU/MLU/MUSA device, so a CPU run
with ``--amp`` needs its own wrapper.  bf16 has float32's exponent range, so
it needs no loss scaling.
"""
from contextlib import contextmanager

import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUBf16OptimWrapper(OptimWrapper):
    """OptimWrapper that runs the forward under CPU bf16 autocast."""

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), torch.autocast(
                device_type='cpu', dtype=torch.bfloat16):
            yield


def enable_amp(cfg: Config) -> None:
    """Switch ``cfg.optim_wrapper`` to mixed precision for this machine."""
    if torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        cfg.optim_wrapper.type = 'CPUBf16OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)
