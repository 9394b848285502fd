"""CPUSyncBatchNorm: SyncBN's semantics over gloo, checked against
BatchNorm over the whole batch (what SyncBN computes on GPUs)."""
import subprocess
import sys

import torch
from mmengine.config import Config
from torch import nn

from mmdoconv.engine.cpu_sync_bn import (CPUSyncBatchNorm,
                                         convert_to_cpu_sync_bn)
from mmdoconv.engine.dist import _sync_bn_to_cpu_sync_bn
from runs import ROOT, tool_env


def test_two_ranks_compute_batchnorm_of_the_whole_batch(tmp_path):
    """Outputs, input / weight / bias gradients and running statistics of
    two ranks equal BatchNorm's on their batches together, with one sample
    per rank in the first step.  Fails if the statistics were each rank's
    own (mutation: drop the all-reduce)."""
    subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
         '2', '--master_port', '29531', f'{ROOT}/tests/cpu_sync_bn_run.py',
         str(tmp_path)], env=tool_env(OMP_NUM_THREADS='1'), check=True,
        capture_output=True, timeout=300)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1)]
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(4, 5, 3, 4, generator=generator) * 3 + 1
    weights = torch.randn(4, 5, 3, 4, generator=generator)
    reference = nn.BatchNorm2d(5, momentum=0.3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=generator)
        reference.bias.uniform_(-1, 1, generator=generator)
    for step, parts in enumerate([[slice(0, 1), slice(1, 2)],
                                  [slice(0, 2), slice(2, 4)]]):
        whole = torch.cat([batch[p] for p in parts]).requires_grad_()
        out = reference(whole)
        (out * torch.cat([weights[p] for p in parts])).sum().backward()
        sizes = [p.stop - p.start for p in parts]
        for rank, (expected, grad) in enumerate(zip(
                out.detach().split(sizes), whole.grad.split(sizes))):
            torch.testing.assert_close(ranks[rank]['outputs'][step],
                                       expected, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ranks[rank]['input_grads'][step],
                                       grad, rtol=1e-4, atol=1e-5)
    # Each rank's parameter gradients are its share; DDP sums them.
    for name in ('weight_grad', 'bias_grad'):
        torch.testing.assert_close(
            ranks[0][name] + ranks[1][name],
            getattr(reference, name.split('_')[0]).grad, rtol=1e-4,
            atol=1e-4)
    for key, value in reference.state_dict().items():
        for rank in ranks:
            torch.testing.assert_close(rank['state'][key], value, rtol=1e-5,
                                       atol=1e-6)


def test_one_process_is_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    layer, reference = CPUSyncBatchNorm(3), nn.BatchNorm2d(3)
    torch.testing.assert_close(layer(x), reference(x))
    torch.testing.assert_close(layer.running_var, reference.running_var)


def test_configs_and_sync_bn_models_convert():
    cfg = Config(dict(model=dict(
        backbone=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),
        heads=[dict(norm_cfg=dict(type='BN')),
               dict(norm_cfg=dict(type='MMSyncBN'))])))
    changed = []
    _sync_bn_to_cpu_sync_bn(cfg.model, 'model', changed)
    assert changed == ['model.backbone.norm_cfg', 'model.heads.1.norm_cfg']
    assert cfg.model.backbone.norm_cfg.type == 'CPUSyncBN'
    assert cfg.model.heads[0].norm_cfg.type == 'BN'
    from mmcv.cnn import build_norm_layer
    name, layer = build_norm_layer(cfg.model.backbone.norm_cfg, 8)
    assert name == 'bn' and type(layer) is CPUSyncBatchNorm
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(0.5)
    model[1].weight.requires_grad_(False)
    converted = convert_to_cpu_sync_bn(model)
    assert type(converted[1]) is CPUSyncBatchNorm
    assert torch.equal(converted[1].running_mean, torch.full((4, ), 0.5))
    assert not converted[1].weight.requires_grad
