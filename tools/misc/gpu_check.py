"""The CUDA checks to run the first time a GPU is lent, as one markdown report.

    python tools/misc/gpu_check.py                       # on cuda, all parts
    TRITON_INTERPRET=1 python tools/misc/gpu_check.py --device cpu \\
        --parts compose fold layers --layer-shapes 16x8 --repeats 1

Parts (in this order, each a section of the report):

- ``compose``: the Triton kernels against the pure-PyTorch composition on
  the 12 cases of ``tools/misc/check_fused_compose.py``, and the layer's own
  self-check under ``no_grad`` with TF32 matmuls on (where the layer first
  composes);
- ``layers``: the benchmark tool's layer table (plain conv vs DO-Conv, train
  and eval, interleaved), fp32 and fp16 AMP;
- ``models``: Faster R-CNN and DeepLabv3 (the benchmark tool's model pairs,
  built through the Runner) train and test steps, DO-Conv against the plain
  model;
- ``fold``: a DO-Conv ResNet-18 with random D, folded against unfolded.

Sized to finish in about 8 minutes on one GPU.  The report goes to stdout
and to ``--out`` (by default a new ``work_dirs/gpu_check_<time>.md``; an
existing file is replaced only with ``--overwrite``).  Exits 1 when a check
fails (a composition or fold beyond round-off, a self-check that does not
pass).
"""
import argparse
import copy
import os
import os.path as osp
import sys
import time

import torch

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

import mmdoconv  # noqa: E402,F401
from mmdoconv import DOConv2d, convert_to_doconv, fold_doconv  # noqa: E402
from mmdoconv.utils.cli import (BadInputError, build_model, cli_main,  # noqa
                                load_config, parse_device,
                                require_new_output)
from workshop.benchmark_layers import (DEPTHWISE_SHAPES,  # noqa: E402
                                       LAYER_SHAPES, benchmark_layer,  # noqa
                                       layer_table, machine_info,
                                       parse_shape)

PARTS = ('compose', 'layers', 'models', 'fold')
FOLD_CONFIG = osp.join(ROOT, 'configs', 'resnet',
                       'resnet18-doconv_8xb32_in1k.py')


def compose_section(device: torch.device) -> tuple:
    """The Triton kernels and the layer's self-check on ``device``."""
    sys.path.insert(0, osp.join(ROOT, 'tools', 'misc'))
    from check_fused_compose import SHAPES, TOLERANCE, run_case

    from mmdoconv.ops.fused_compose import triton_self_check
    lines = ['| C_out, C_in, groups, M*N, D_mul | dtype | W\' | grad W | '
             'grad D | |', '|---|---|---|---|---|---|']
    failed = 0
    for dtype in (torch.float32, torch.float64):
        for shape in SHAPES:
            errors = run_case(shape, dtype, 'triton', device)
            bad = any(e > TOLERANCE[dtype] for e in errors)
            failed += bad
            lines.append(f'| {shape} | {str(dtype)[6:]} | '
                         + ' | '.join(f'{e:.1e}' for e in errors)
                         + f' | {"**differs**" if bad else "ok"} |')
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.no_grad():
            why = triton_self_check(device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    failed += bool(why)
    lines.append('')
    lines.append('Layer self-check (no_grad, TF32 matmuls on): '
                 + ('passed' if not why else f'**{why}**'))
    return '\n'.join(lines), failed


def layers_section(device: torch.device, shapes, repeats: int) -> tuple:
    parts = []
    for amp in (False, True):
        results = [benchmark_layer(shape.channels, shape.size, 8, repeats,
                                   min(3, repeats), str(device), amp,
                                   kernel=shape.kernel, groups=shape.groups)
                   for shape in shapes]
        title = 'fp16 AMP' if amp and device.type == 'cuda' else (
            'bf16 AMP' if amp else 'fp32')
        parts.append(f'{title}, stride 1, batch 8, train step with '
                     f'input and weight gradients, median of {repeats}:\n\n'
                     + layer_table(results))
    return '\n\n'.join(parts), 0


def models_section(device: torch.device, repeats: int) -> tuple:
    from workshop.benchmark_models import benchmark_models, model_table
    results = benchmark_models(['det', 'seg'], repeats, str(device))
    return model_table(results), 0


def fold_section(device: torch.device) -> tuple:
    model = build_model(load_config(FOLD_CONFIG)).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, DOConv2d):
                layer.D.copy_(torch.randn(layer.D.shape,
                                          generator=generator) * 0.1)
        x = torch.randn(2, 3, 64, 64, generator=generator).to(device)
        unfolded = model(x, mode='tensor')
        folded_model = copy.deepcopy(model)
        count = fold_doconv(folded_model)
        folded = folded_model(x, mode='tensor')
    scale = unfolded.abs().max().clamp(min=1)
    error = ((folded - unfolded).abs().max() / scale).item()
    rows = [('ResNet-18 (random D), 2x3x64x64', count, error)]
    if device.type == 'cuda':  # mmcv's masked op has no CPU kernel
        name = 'MaskedConv2d (random D), masked path, 1x8x16x16'
        try:
            rows.append((name, 1, _masked_conv_error(device)))
        except Exception as error:  # noqa: BLE001 - e.g. mmcv without CUDA ops
            rows.append((f'{name}: not run ({type(error).__name__}: '
                         f'{str(error)[:80]})', 0, float('nan')))
    bad = [error > 1e-4 for _, _, error in rows]
    return ('| model | DO-Conv layers folded | max relative \\|folded - '
            'unfolded\\| | |\n|---|---|---|---|\n' + '\n'.join(
                f'| {name} | {count} | {error:.1e} | '
                f'{"**differs**" if failed else "ok" if error == error else "-"} |'
                for (name, count, error), failed in zip(rows, bad))
            ), int(any(bad))


def _masked_conv_error(device: torch.device) -> float:
    """GA-RetinaNet's masked conv: the DO-Conv twin's masked forward
    against the folded MaskedConv2d's."""
    from mmcv.ops import MaskedConv2d
    generator = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(MaskedConv2d(8, 4, 3, padding=1))
    convert_to_doconv(model)
    model = model.to(device).eval()
    with torch.no_grad():
        model[0].D.copy_(torch.randn(model[0].D.shape, generator=generator)
                         * 0.3)
        x = torch.randn(1, 8, 16, 16, generator=generator).to(device)
        mask = (torch.rand(1, 16, 16, generator=generator) > 0.5).float()
        unfolded = model[0](x, mask.to(device))
        fold_doconv(model)
        folded = model[0](x, mask.to(device))
    scale = unfolded.abs().max().clamp(min=1)
    return ((folded - unfolded).abs().max() / scale).item()


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--parts', nargs='+', choices=PARTS,
                        default=list(PARTS))
    parser.add_argument('--layer-shapes', nargs='+', type=parse_shape,
                        default=list(LAYER_SHAPES) + [
                            parse_shape(shape) for shape in DEPTHWISE_SHAPES])
    parser.add_argument('--repeats', type=int, default=10,
                        help='timed rounds per variant (layers and models)')
    parser.add_argument('--out', help='markdown report (default: '
                        'work_dirs/gpu_check_<time>.md)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace --out if it exists')
    args = parser.parse_args()
    device = parse_device(args.device, '--parts compose'
                          if 'compose' in args.parts else None)
    if device.type not in ('cuda', 'cpu'):
        raise BadInputError(f'--device must be cuda or cpu, but got '
                            f'{args.device!r}')
    if args.repeats < 1:
        raise BadInputError(f'--repeats must be >= 1, but got {args.repeats}')
    if args.out is None:
        args.out = osp.join('work_dirs',
                            time.strftime('gpu_check_%Y%m%d_%H%M%S.md'))
    require_new_output(args.out, args.overwrite)
    machine = machine_info(str(device))
    report = ['# mmdoconv GPU check', '',
              'machine: ' + ', '.join(f'{k}={v}' for k, v in machine.items())]
    sections = dict(
        compose=('Triton composition against pure PyTorch',
                 lambda: compose_section(device)),
        layers=('Layer level (ratios against nn.Conv2d)',
                lambda: layers_section(device, args.layer_shapes,
                                       args.repeats)),
        models=('Model level, train and test steps (ratios against the '
                'plain model)', lambda: models_section(device, args.repeats)),
        fold=('Folded = unfolded', lambda: fold_section(device)))
    failed = 0
    for index, part in enumerate(args.parts, 1):
        title, run = sections[part]
        print(f'[{index}/{len(args.parts)}] {part}', file=sys.stderr,
              flush=True)
        start = time.monotonic()
        text, failures = run()
        failed += failures
        report += ['', f'## {title} ({time.monotonic() - start:.0f} s)', '',
                   text]
    report += ['', f'**{failed} check(s) failed**' if failed
               else 'All checks passed.']
    text = '\n'.join(report) + '\n'
    print(text)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(text)
    print(f'wrote {args.out}', file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
