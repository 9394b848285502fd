"""``--amp`` for the tools: fp16 AMP on GPUs, bf16 autocast on CPU.

mmengine's AmpOptimWrapper asserts a CUDA/NPU/MLU/MUSA device, so a CPU run
with ``--amp`` needs its own wrapper.  bf16 has float32's exponent range and
needs no loss scaling.  mmcv 2.1's CPU kernels (NMS, RoIAlign) accept only
float32, so on CPU autocast covers the model's ``extract_feat`` (backbone and
neck: most of the compute, and every DO-Conv layer of the task configs) and
the heads receive float32 features.  Models without ``extract_feat`` are
autocast whole.  As with mmengine's AmpOptimWrapper, only the training
forward runs in mixed precision: validation and testing stay float32.
"""
from contextlib import contextmanager, nullcontext

import torch
from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


def _to_float(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    return value


def _bf16(function):

    def run_in_bf16(*args, **kwargs):
        with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
            return _to_float(function(*args, **kwargs))

    return run_in_bf16


@OPTIM_WRAPPERS.register_module()
class CPUBf16OptimWrapper(OptimWrapper):
    """OptimWrapper for CPU mixed precision with bf16 autocast.

    Inside :meth:`optim_context` (the training forward) the model's
    ``extract_feat`` runs under bf16 autocast, or the whole forward where the
    model has none; the model is as it was once the context ends, so
    validation and testing run in float32.
    """

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        module = model.module if is_model_wrapper(model) else model
        extract_feat = getattr(module, 'extract_feat', None)
        autocast = torch.autocast(device_type='cpu', dtype=torch.bfloat16) \
            if extract_feat is None else nullcontext()
        # An attribute of this instance, so the class stays untouched; what
        # the instance itself held (if anything) is put back afterwards.
        missing = object()
        own = module.__dict__.get('extract_feat', missing)
        if extract_feat is not None:
            module.extract_feat = _bf16(extract_feat)
        try:
            with super().optim_context(model), autocast:
                yield
        finally:
            if extract_feat is not None:
                if own is missing:
                    del module.extract_feat
                else:
                    module.extract_feat = own


def enable_amp(cfg: Config) -> None:
    """Switch ``cfg.optim_wrapper`` to mixed precision for this machine."""
    if torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        cfg.optim_wrapper.type = 'CPUBf16OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)
