"""Distributed training on CPU (gloo) with mmengine's Runner.

mmengine 0.10.7 always hands ``device_ids=[LOCAL_RANK]`` to
DistributedDataParallel, which torch rejects for a module on the CPU, and its
configs default to the NCCL backend.  :func:`use_cpu_distributed` points a
config at gloo and at a wrapper that drops ``device_ids`` for CPU modules.
"""
import torch
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUAwareDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel that also wraps CPU modules."""

    def __init__(self, module: torch.nn.Module, device_ids=None, **kwargs):
        first = next(module.parameters(), None)
        if first is None or first.device.type == 'cpu':
            device_ids = None  # DDP's rule for CPU modules
        super().__init__(module=module, device_ids=device_ids, **kwargs)


def use_cpu_distributed(cfg: Config) -> None:
    """Make a distributed run of ``cfg`` work without GPUs (no-op with CUDA)."""
    if torch.cuda.is_available() or cfg.get('launcher', 'none') == 'none':
        return
    cfg.setdefault('env_cfg', {})
    cfg.env_cfg.setdefault('dist_cfg', {})
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='CPUAwareDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
