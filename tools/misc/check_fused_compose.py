"""Check a fused DO-Conv composition against the pure-PyTorch one.

    python tools/misc/check_fused_compose.py                          # C++ on CPU
    python tools/misc/check_fused_compose.py --backend triton --device cuda
    TRITON_INTERPRET=1 python tools/misc/check_fused_compose.py --backend triton --device cpu

Compares W' and the gradients of W and D on 12 cases (dense, depthwise,
grouped, D_mul > M*N, 1x3 .. 7x7 kernels; float32 and float64) and exits
non-zero when one differs by more than the dtype's round-off.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

from mmdoconv.cnn.compose import compose_grouped  # noqa: E402
from mmdoconv.ops.fused_compose import FusedCompose  # noqa: E402
from mmdoconv.utils.cli import (BadInputError, cli_main,  # noqa: E402
                                parse_device)

# (C_out, C_in, groups, M*N, D_mul)
SHAPES = [(64, 48, 1, 9, 9), (32, 32, 32, 9, 9), (24, 16, 4, 9, 20),
          (8, 6, 2, 3, 3), (6, 3, 1, 49, 49), (40, 20, 1, 25, 25)]
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


def run_case(shape, dtype, backend, device):
    out_channels, in_channels, groups, positions, d_mul = shape
    generator = torch.Generator().manual_seed(sum(shape))
    weight = torch.randn(out_channels, in_channels // groups, d_mul,
                         dtype=dtype, generator=generator).to(device)
    d_full = torch.randn(in_channels, positions, d_mul, dtype=dtype,
                         generator=generator).to(device)
    results = []
    for fused in (False, True):
        w = weight.clone().requires_grad_()
        d = d_full.clone().requires_grad_()
        out = FusedCompose.apply(w, d, groups, backend) if fused \
            else compose_grouped(w, d, groups)
        out.backward(torch.ones_like(out) + out.detach())
        results.append((out.detach(), w.grad, d.grad))
    errors = []
    for expected, got in zip(*results):
        scale = expected.abs().max().clamp(min=1)
        errors.append(((got - expected).abs().max() / scale).item())
    return errors


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backend', choices=['cpp', 'triton'], default='cpp')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    device = parse_device(args.device, '--backend triton'
                          if args.backend == 'triton' else None)
    if args.backend == 'cpp':
        from mmdoconv.ops.extension import load_extension
        module, why = load_extension()
        if module is None:
            raise BadInputError(f'--backend cpp: {why}')
    print(f'backend={args.backend} device={device} '
          f'({torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"})')
    if args.backend == 'triton':
        # What the layer runs before it first uses Triton on a device.
        from mmdoconv.ops.fused_compose import triton_self_check
        why = triton_self_check(device)
        print(f'layer self-check: {"passed" if not why else why}')
    print('| C_out, C_in, groups, M*N, D_mul | dtype | W\' | grad W | grad D |')
    print('|---|---|---|---|---|')
    failed = 0
    cases = [(s, t) for t in (torch.float32, torch.float64) for s in SHAPES]
    for shape, dtype in cases:
        errors = run_case(shape, dtype, args.backend, device)
        bad = any(e > TOLERANCE[dtype] for e in errors)
        failed += bad
        cells = ' | '.join(f'{e:.1e}' for e in errors)
        print(f'| {shape} | {str(dtype)[6:]} | {cells} |'
              + (' **differs**' if bad else ''))
    if failed:
        print(f'error: {failed} of {len(cases)} cases differ beyond round-off')
        sys.exit(1)
    print(f'all {len(cases)} cases agree (max error relative to max |value|)')


if __name__ == '__main__':
    main()
