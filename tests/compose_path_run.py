"""A small DO-Conv model through mmengine's Runner, recording what a
composition path computes; run by tests/test_interpreted_cuda_path.py.

    python tests/compose_path_run.py WORK_DIR OUT.pt

Run once with ``MMDOCONV_COMPOSE=triton TRITON_INTERPRET=1`` (the CUDA code
path: Triton kernels, self-check, recomposing backward, eval cache, fold and
the fold hook, all on CPU tensors) and once with the default (C++) path; the
test compares the two records.
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn

from mmdoconv import DOConv2d, DOConvLayer, DOConvTranspose2d, fold_doconv
from mmdoconv.ops.fused_compose import fused_backend
from toy import ToyNet, toy_runner


class MixedNet(ToyNet):
    """Dense, depthwise, grouped, D_mul > M*N and transposed DO-Conv layers,
    with BN."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            DOConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            DOConv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
            DOConv2d(8, 8, 3, padding=1, groups=2, D_mul=12), nn.ReLU(),
            DOConv2d(8, 8, (1, 3), padding=(0, 1), recompute_kernel=False),
            DOConvTranspose2d(8, 8, 2, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def main(work_dir: str, out: str) -> None:
    torch.manual_seed(0)
    model = MixedNet()
    with torch.no_grad():  # non-zero D: D = I would prove nothing
        for layer in model.modules():
            if isinstance(layer, DOConvLayer):
                layer.D.normal_(0, 0.3)
    # The first composition happens under no_grad, as in an eval before
    # training: the backend choice (and the Triton self-check) runs there.
    probe = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        first_eval = model(probe)
    backend = fused_backend(model.body[0].weight)
    # One train step by hand: the recomposing backward's gradients.
    model.train()
    loss = F.cross_entropy(model(probe), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    # The Runner: train steps, validation folded by the hook, a test.
    runner = toy_runner(work_dir, model=model, max_iters=2, val_interval=2,
                        custom_hooks=[dict(type='DOConvFoldHook')])
    runner.train()
    val = runner.message_hub.get_scalar('val/toy/predictions').current()
    test = runner.test()
    model = runner.model.eval()
    with torch.no_grad():
        unfolded = model(probe)
        cached = model(probe)  # from the eval cache
        fold_doconv(model)
        folded = model(probe)
    torch.save(dict(backend=backend, first_eval=first_eval, loss=loss.detach(),
                    grads=grads, val=val, test=test,
                    state={k: v.clone() for k, v in
                           runner.model.state_dict().items()},
                    unfolded=unfolded, cached=cached, folded=folded), out)
    print(f'backend: {backend}')


if __name__ == '__main__':
    main(*sys.argv[1:3])
