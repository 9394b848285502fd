"""Benchmark DO-Conv against plain convolution, as ratios measured in one run.

    python tools/analysis_tools/benchmark.py                      # layer level, 4 shapes
    python tools/analysis_tools/benchmark.py --shapes 256x14 --repeats 20
    python tools/analysis_tools/benchmark.py --models det seg cls # + model level
    python tools/analysis_tools/benchmark.py --shapes 512x7 --profile  # + torch.profiler
    python tools/analysis_tools/benchmark.py --amp                # fp16 (GPU) / bf16 (CPU) autocast
    python tools/analysis_tools/benchmark.py --no-input-grad      # layers as a stem (weight grads only)

Variants are interleaved (A B A B ...) and each time is the median after
warm-up.  Prints markdown tables and the machine; writes JSON (--out, by
default a new work_dirs/benchmark_<timestamp>.json; an existing file is
replaced only with --overwrite).
"""
import argparse
import os.path as osp
import sys
import time

import torch

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)  # workshop/ of the checkout

import mmdoconv  # noqa: E402,F401
from mmdoconv.utils.cli import (BadInputError, cli_main,  # noqa: E402
                                require_new_output)
from workshop.benchmark_layers import (LAYER_SHAPES, amp_dtype,  # noqa: E402
                                       benchmark_layer, layer_table,
                                       machine_info, parse_shape,
                                       profile_layer, write_json)


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shapes', nargs='+', type=parse_shape,
                        default=list(LAYER_SHAPES),
                        help='layer shapes CHANNELSxSIZE (3x3, stride 1)')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--models', nargs='*', default=[],
                        choices=['det', 'seg', 'cls'],
                        help='also time Faster R-CNN / DeepLabv3 / ResNet-50 '
                        '(ImageNet) train and inference steps')
    parser.add_argument('--model-repeats', type=int, default=5)
    parser.add_argument('--rss-runs', type=int, default=1,
                        help='fresh processes per variant for the CPU peak '
                        'memory of each model (median)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--profile', action='store_true',
                        help='also print torch.profiler tables of the DO-Conv '
                        'train step (fused and pure-PyTorch composition) at '
                        'each shape')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: layers under autocast (fp16 on '
                        'CUDA, bf16 on CPU), models with the tools\' --amp '
                        'optimizer wrapper')
    parser.add_argument('--no-input-grad', dest='input_grad',
                        action='store_false',
                        help='layer train steps without the input gradient '
                        '(a stem fed the image: the README\'s earlier tables '
                        'timed this case); by default the input needs a '
                        'gradient, as every layer of a network but the first '
                        'does')
    parser.add_argument('--out', help='JSON results (default: '
                        'work_dirs/benchmark_<timestamp>.json)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace --out if it exists')
    args = parser.parse_args()
    if args.out is None:
        args.out = osp.join(
            'work_dirs', time.strftime('benchmark_%Y%m%d_%H%M%S.json'))
    # Checked before any work: a model-level run takes half an hour.
    require_new_output(args.out, args.overwrite)
    for name in ('batch', 'repeats', 'model_repeats', 'rss_runs', 'threads'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BadInputError(f'--{name.replace("_", "-")} must be >= 1, '
                                f'but got {value}')
    if args.warmup < 0:
        raise BadInputError(f'--warmup must be >= 0, but got {args.warmup}')
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info(args.device)
    print('machine: ' + ', '.join(f'{k}={v}' for k, v in machine.items()))
    layers = []
    for index, (channels, size) in enumerate(args.shapes, 1):
        print(f'[{index}/{len(args.shapes)}] layer {channels}@{size}x{size}',
              flush=True)
        layers.append(benchmark_layer(channels, size, args.batch,
                                      args.repeats, args.warmup, args.device,
                                      args.amp, args.input_grad))
    precision = ('AMP, ' + str(amp_dtype(torch.device(args.device))).replace(
        'torch.', '') + ' autocast') if args.amp else 'fp32'
    gradients = ('input and weight gradients' if args.input_grad else
                 'weight gradients only, no input gradient')
    print('\nLayer level (3x3, stride 1, batch %d, %s, train step with %s, '
          'median of %d):\n' % (args.batch, precision, gradients,
                                 args.repeats))
    print(layer_table(layers))
    if args.profile:
        for channels, size in args.shapes:
            tables = profile_layer(channels, size, args.batch, args.device,
                                   input_grad=args.input_grad)
            for name, title in (
                    ('doconv', 'fused composition'),
                    ('doconv_keep', "fused composition, W' kept"),
                    ('doconv_torch', "pure-PyTorch composition, W' kept")):
                print(f'\nProfile: DO-Conv train step, {channels}@{size}x'
                      f'{size}, {title} (10 steps):\n{tables[name]}')
    payload = dict(machine=machine, layers=layers, models=[])
    if args.models:
        from workshop.benchmark_models import benchmark_models, model_table
        payload['models'] = benchmark_models(args.models, args.model_repeats,
                                             args.device, args.amp,
                                             args.rss_runs)
        print('\nModel level (%s, median of %d; spread = lowest-highest '
              'per-round ratio):\n' % (precision, args.model_repeats))
        print(model_table(payload['models']))
    write_json(args.out, payload)
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()
