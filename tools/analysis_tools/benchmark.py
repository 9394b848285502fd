"""Benchmark DO-Conv against plain convolution, as ratios measured in one run.

    python tools/analysis_tools/benchmark.py                      # layer level, 4 shapes
    python tools/analysis_tools/benchmark.py --shapes 256x14 --repeats 20
    python tools/analysis_tools/benchmark.py --shapes 768x7:k7:dw 672x14:k5:dw  # depthwise
    python tools/analysis_tools/benchmark.py --models det seg cls # + this project's configs
    python tools/analysis_tools/benchmark.py --shapes --models \
        mmpretrain::convnext/convnext-tiny_32xb128_in1k.py workshop/benchmark_zoo.txt
    python tools/analysis_tools/benchmark.py --shapes 512x7 --profile  # + torch.profiler
    python tools/analysis_tools/benchmark.py --shapes --models \
        mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py --layer-times  # + per layer
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
from typing import List, Tuple

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


def split_models(models: List[str]) -> Tuple[List[str], List[str]]:
    """``--models`` as (det/seg/cls keywords, config names), list files
    read and every config checked before any work."""
    from workshop.benchmark_configs import read_model_list, resolve_config
    kinds, configs = [], []
    for name in models:
        if name in ('det', 'seg', 'cls'):
            kinds.append(name)
        elif name.endswith('.txt'):
            if not osp.isfile(name):
                raise BadInputError(f'model list {name!r} does not exist')
            configs += read_model_list(name)
        else:
            configs.append(name)
    for name in configs:
        resolve_config(name)
    return kinds, configs


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shapes', nargs='*', type=parse_shape,
                        default=list(LAYER_SHAPES),
                        help='layer shapes CHANNELSxSIZE[:kKERNEL][:dw|:gGROUPS]'
                        ' (stride 1; default kernel 3, dense): 256x14, '
                        '768x7:k7:dw; none with --models for the model level '
                        'only')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--models', nargs='*', default=[],
                        help='also time models: det / seg / cls (this '
                        'project\'s Faster R-CNN, DeepLabv3 and ResNet-50 '
                        'configs, baseline against DO-Conv, train and '
                        'inference steps through the Runner), any config '
                        '(scope::path or a file: its plain model against the '
                        'switch\'s conversion, tensor-mode train steps), or '
                        'a .txt list of configs')
    parser.add_argument('--model-repeats', type=int, default=None,
                        help='rounds per model (default: 5 for det/seg/cls, '
                        '11 for configs)')
    parser.add_argument('--model-batch', type=int, default=8,
                        help='batch of the config train steps')
    parser.add_argument('--model-size', type=int, default=224,
                        help='square input size of the config train steps')
    parser.add_argument('--python-glue', action='store_true',
                        help='also time DO-Conv layers and config models on '
                        'the Python autograd.Function that the C++ node '
                        'replaces on CPU (one more interleaved variant)')
    parser.add_argument('--control', action='store_true',
                        help='configs: also time a copy of the plain model '
                        'as one more variant (A/A test: its ratio to the '
                        'plain model is this run\'s own error)')
    parser.add_argument('--ws-reference', action='store_true',
                        help='configs: also time the plain model with mmcv\'s '
                        'ConvWS2d (weight standardization) in place of the '
                        'convs the switch converts, as one more variant: '
                        'what a cheap weight transform of the same kernels '
                        'costs on this machine')
    parser.add_argument('--layer-times', action='store_true',
                        help='configs: also time every converted layer in '
                        'place (its forward and the backward of its own '
                        'autograd nodes, inside the train step, plain and '
                        'DO-Conv model interleaved) and say how much of the '
                        'step\'s extra time they account for')
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
    kinds, configs = split_models(args.models)
    if args.python_glue and not (configs or args.shapes):
        raise BadInputError('--python-glue times layers (--shapes) and config '
                            'models (--models CONFIG or a .txt list), but '
                            'neither was given')
    if args.control and not configs:
        raise BadInputError('--control times a copy of each config\'s plain '
                            'model (--models CONFIG or a .txt list), but no '
                            'config was given')
    for flag in ('layer_times', 'ws_reference'):
        if getattr(args, flag) and not configs:
            raise BadInputError(
                f'--{flag.replace("_", "-")} times config models (--models '
                'CONFIG or a .txt list), but no config was given')
    if configs and args.amp:
        raise BadInputError('--amp times the det/seg/cls models only; config '
                            'train steps run in fp32')
    for name in ('batch', 'repeats', 'model_repeats', 'rss_runs', 'threads',
                 'model_batch', 'model_size'):
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
    for index, shape in enumerate(args.shapes, 1):
        print(f'[{index}/{len(args.shapes)}] layer {shape}', flush=True)
        layers.append(benchmark_layer(shape.channels, shape.size, args.batch,
                                      args.repeats, args.warmup, args.device,
                                      args.amp, args.input_grad,
                                      shape.kernel, shape.groups,
                                      args.python_glue))
    precision = ('AMP, ' + str(amp_dtype(torch.device(args.device))).replace(
        'torch.', '') + ' autocast') if args.amp else 'fp32'
    gradients = ('input and weight gradients' if args.input_grad else
                 'weight gradients only, no input gradient')
    if layers:
        print('\nLayer level (stride 1, batch %d, %s, train step with %s, '
              'median of %d):\n'
              % (args.batch, precision, gradients, args.repeats))
        print(layer_table(layers))
    if args.profile:
        for shape in args.shapes:
            tables = profile_layer(shape.channels, shape.size, args.batch,
                                   args.device, input_grad=args.input_grad,
                                   kernel=shape.kernel, groups=shape.groups)
            for name, title in (
                    ('doconv', 'fused composition'),
                    ('doconv_keep', "fused composition, W' kept"),
                    ('doconv_torch', "pure-PyTorch composition, W' kept")):
                print(f'\nProfile: DO-Conv train step, {shape}, {title} '
                      f'(10 steps):\n{tables[name]}')
    payload = dict(machine=machine, layers=layers, models=[], configs=[],
                   layer_times=[])
    if kinds:
        from workshop.benchmark_models import benchmark_models, model_table
        repeats = args.model_repeats or 5
        payload['models'] = benchmark_models(kinds, repeats, args.device,
                                             args.amp, args.rss_runs)
        print('\nModel level (%s, median of %d; spread = lowest-highest '
              'per-round ratio):\n' % (precision, repeats))
        print(model_table(payload['models']))
    if configs:
        from workshop.benchmark_configs import benchmark_configs, config_table
        repeats = args.model_repeats or 11
        payload['configs'] = benchmark_configs(
            configs, repeats, args.model_batch, args.model_size, args.device,
            args.rss_runs, args.python_glue, args.control, args.ws_reference)
        print('\nConfigs, plain model against the switch\'s conversion '
              '(fp32, batch %d, %dx%d, forward in tensor mode + loss + '
              'backward + SGD step, median of %d interleaved rounds; spread '
              '= lowest-highest per-round ratio; peak memory: %s):\n'
              % (args.model_batch, args.model_size, args.model_size, repeats,
                 'resident-set high-water mark of a fresh process per variant'
                 if args.device == 'cpu' else 'CUDA max allocated'))
        print(config_table(payload['configs']))
    if args.layer_times:
        from workshop.benchmark_layer_times import (layer_times_table,
                                                    time_layers)
        repeats = args.model_repeats or 11
        timeable = [row['config'] for row in payload['configs']
                    if not row.get('error')]
        for index, config in enumerate(timeable, 1):
            print(f'[layer times {index}/{len(timeable)}] {config} (batch '
                  f'{args.model_batch}, {repeats} rounds)', flush=True)
            result = time_layers(config, repeats, batch=args.model_batch,
                                 size=args.model_size, device=args.device)
            payload['layer_times'].append(result)
            print(f'\nConverted layers of {config} in place (ms per train '
                  f'step, median of {repeats} interleaved rounds):\n')
            print(layer_times_table(result))
    write_json(args.out, payload)
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()
