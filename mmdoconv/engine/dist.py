"""Distributed training on CPU (gloo) with mmengine's Runner.

mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` before
creating the process group, always hands ``device_ids=[LOCAL_RANK]`` to
DistributedDataParallel (which torch rejects for a module on the CPU), and its
configs default to the NCCL backend.  :func:`use_cpu_distributed` creates the
gloo process group itself (the Runner then skips its own ``init_dist``) and
points the config at a wrapper that drops ``device_ids`` for CPU modules.
torch's and mmcv's SyncBN run on CUDA tensors only, so SyncBN layers of the
config (and ``sync_bn``) become :class:`~.cpu_sync_bn.CPUSyncBatchNorm`, which
keeps SyncBN's semantics over gloo (statistics of every rank's batch
together), with one log line saying so.
"""
import logging
from typing import Any, List

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

from .cpu_sync_bn import convert_to_cpu_sync_bn


@MODEL_WRAPPERS.register_module()
class CPUAwareDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel that also wraps CPU modules.

    Args:
        sync_bn: Turn every BatchNorm into
            :class:`~.cpu_sync_bn.CPUSyncBatchNorm` first (a config's
            ``sync_bn`` on a machine without GPUs).
    """

    def __init__(self, module: torch.nn.Module, device_ids=None,
                 sync_bn: bool = False, **kwargs):
        first = next(module.parameters(), None)
        if first is None or first.device.type == 'cpu':
            device_ids = None  # DDP's rule for CPU modules
        if sync_bn:
            module = convert_to_cpu_sync_bn(module)
        super().__init__(module=module, device_ids=device_ids, **kwargs)


def _sync_bn_to_cpu_sync_bn(node: Any, path: str, changed: List[str]) -> None:
    """Turn every SyncBN norm config under ``node`` into ``CPUSyncBN``."""
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN', 'SyncBatchNorm'):
            node['type'] = 'CPUSyncBN'
            changed.append(path)
        for key, value in node.items():
            _sync_bn_to_cpu_sync_bn(value, f'{path}.{key}', changed)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            _sync_bn_to_cpu_sync_bn(value, f'{path}.{index}', changed)


def use_cpu_distributed(cfg: Config) -> None:
    """Make a distributed run of ``cfg`` work without GPUs (no-op with CUDA)."""
    launcher = cfg.get('launcher', 'none')
    if torch.cuda.is_available() or launcher == 'none':
        return
    if launcher != 'pytorch':
        raise ValueError(f'without GPUs only launcher="pytorch" (torchrun) is '
                         f'supported, but got launcher={launcher!r}')
    if not torch_dist.is_initialized():
        # RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from torchrun.
        torch_dist.init_process_group(backend='gloo')
    cfg.setdefault('env_cfg', {})
    cfg.env_cfg.setdefault('dist_cfg', {})
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    changed: List[str] = []
    _sync_bn_to_cpu_sync_bn(cfg.model, 'model', changed)
    sync_bn = bool(cfg.get('sync_bn'))
    if sync_bn:
        cfg.sync_bn = None  # mmengine would convert to nn.SyncBatchNorm
        changed.append('sync_bn')
    if changed:
        print_log(f'CPU distributed (gloo): SyncBN runs as CPUSyncBN '
                  '(batch statistics reduced across ranks over gloo) in '
                  f'{len(changed)} norm configs ({", ".join(changed[:3])}'
                  f'{", ..." if len(changed) > 3 else ""})', 'current',
                  logging.INFO)
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='CPUAwareDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    if sync_bn:
        cfg.model_wrapper_cfg['sync_bn'] = True
