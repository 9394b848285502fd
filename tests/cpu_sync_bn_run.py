"""One rank of the CPUSyncBatchNorm test (``torchrun --nproc_per_node 2``):
normalises its half of a fixed batch, backpropagates a fixed loss and saves
what it computed to OUT_DIR/rank<R>.pt."""
import sys

import torch
import torch.distributed as dist

from mmdoconv.engine.cpu_sync_bn import CPUSyncBatchNorm


def main(out_dir: str) -> None:
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(2 * world, 5, 3, 4, generator=generator) * 3 + 1
    weights = torch.randn(2 * world, 5, 3, 4, generator=generator)
    layer = CPUSyncBatchNorm(5, momentum=0.3)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=generator)
        layer.bias.uniform_(-1, 1, generator=generator)
    # One sample per rank in the first step: legal with SyncBN.
    steps = [slice(rank, rank + 1), slice(2 * rank, 2 * rank + 2)]
    outputs, grads = [], []
    for part in steps:
        x = batch[part].clone().requires_grad_()
        out = layer(x)
        (out * weights[part]).sum().backward()
        outputs.append(out.detach())
        grads.append(x.grad)
    torch.save(dict(outputs=outputs, input_grads=grads,
                    weight_grad=layer.weight.grad, bias_grad=layer.bias.grad,
                    state=layer.state_dict()), f'{out_dir}/rank{rank}.pt')
    dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1])
