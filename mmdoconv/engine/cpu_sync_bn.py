"""SyncBatchNorm's semantics for CPU distributed training (gloo).

torch's ``nn.SyncBatchNorm`` and mmcv's ``MMSyncBN`` run on CUDA tensors
only.  :class:`CPUSyncBatchNorm` reduces each batch's per-channel sum, sum of
squares and count across the ranks with a differentiable all-reduce
(``torch.distributed.nn.functional.all_reduce``, which gloo runs on CPU
tensors), so every rank normalises with the statistics of the global batch,
its running statistics stay identical on every rank, and the gradients are
those of BatchNorm over the global batch, as with SyncBN on GPUs.  One sample
per rank, legal with SyncBN, is legal here too.
"""
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.registry import MODELS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def _world_size() -> int:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size()
    return 1


@MODELS.register_module('CPUSyncBN')
class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the batch of every
    rank together; plain BatchNorm in eval mode or in one process.

    Args: as ``nn.SyncBatchNorm`` (without ``process_group``: the default
    group).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f'expected at least 2-D input (got '
                             f'{input.dim()}-D input)')

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and _world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        from torch.distributed.nn.functional import all_reduce
        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        count = input.new_full((1, ), input.numel() // channels)
        # One all-reduce for the three sums; differentiable, so the backward
        # reduces the gradients' sums the same way.
        stats = all_reduce(torch.cat(
            [input.sum(dims), input.square().sum(dims), count]))
        total = stats[-1]
        if total.item() <= 1:
            raise ValueError('Expected more than 1 value per channel when '
                             f'training over all ranks, got input size '
                             f'{list(input.shape)} on each of '
                             f'{_world_size()} ranks')
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean.square()).clamp(
            min=0)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total)
        shape = (1, channels) + (1, ) * (input.dim() - 2)
        output = (input - mean.view(shape)) * torch.rsqrt(
            var.view(shape) + self.eps)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor,
                              total: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum: Optional[float] = self.momentum
        if momentum is None:  # cumulative moving average, as BatchNorm
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = var * total / (total - 1)
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def convert_to_cpu_sync_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm of ``module`` by :class:`CPUSyncBatchNorm`
    with the same parameters and statistics (what ``sync_bn='torch'`` does
    with ``nn.SyncBatchNorm`` on GPUs)."""
    if isinstance(module, _BatchNorm) and not isinstance(
            module, CPUSyncBatchNorm):
        converted = CPUSyncBatchNorm(module.num_features, module.eps,
                                     module.momentum, module.affine,
                                     module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        if module.affine:
            converted.weight.requires_grad_(module.weight.requires_grad)
            converted.bias.requires_grad_(module.bias.requires_grad)
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_to_cpu_sync_bn(child))
    return module
