"""Model-level timing of any OpenMMLab config: its plain model against the
same model converted by the switch, for ``tools/analysis_tools/benchmark.py
--models``.

A config (``mmpretrain::convnext/convnext-tiny_32xb128_in1k.py``, a local
path, or a zoo list file of them) is built through its own registry, as a new
user would: ``MODELS.build(cfg.model)``, ``init_weights()``, then a deep copy
converted with :func:`~mmdoconv.convert_to_doconv` (D = I, the plain weights
kept).  The train step is a forward in ``mode='tensor'`` on a random batch,
a loss (cross-entropy against random labels for a classifier's logits, else
the mean square of every output tensor), backward and an SGD step; the
variants are interleaved in one process
(:func:`~workshop.benchmark_layers.interleaved_medians`).  Peak memory is
the CUDA allocator's peak, or on CPU the resident-set high-water mark of a
fresh process per variant running the same steps
(``python -m workshop.benchmark_configs --peak-rss CONFIG VARIANT``).
With ``python_glue`` one more variant, a copy of the DO-Conv model stepping
under :func:`~mmdoconv.cnn.recomposing_conv.recompose_in_python`, times the
Python ``autograd.Function`` that the C++ node replaces on CPU; with
``control`` a copy of the plain model is timed as if it were another variant
(an A/A test: its ratio to the plain model is the instrument's own error in
that run, which on a shared VM reaches several per cent); with
``ws_reference`` a copy of the plain model whose convs (those the switch
converts) are mmcv's ``ConvWS2d`` — weight standardization, the weight
transform mmdet's gn+ws configs switch on in one line — prices a cheap
reparameterization of the same kernels on the same machine.  All three are
time only.
"""
import argparse
import contextlib
import copy
import io
import json
import os.path as osp
import statistics
import subprocess
import sys
import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope
from torch import nn

from mmdoconv import convert_to_doconv
from mmdoconv.utils.cli import BadInputError, import_scope
from mmdoconv.utils.compare import flatten_tensors

from .benchmark_layers import (in_python_glue, interleaved_medians,
                               ratio_spread)

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: The variants a config is timed as.
VARIANTS = ('plain', 'doconv')
#: The optional variants: DO-Conv through the Python autograd.Function,
#: and a copy of the plain model (A/A control); with their table headers.
PYTHON_GLUE = 'doconv_python'
CONTROL = 'plain_copy'
WS_REFERENCE = 'plain_ws'
_EXTRA_HEADERS = {PYTHON_GLUE: 'Python glue: ratio (spread)',
                  CONTROL: 'A/A control, plain copy: ratio (spread)',
                  WS_REFERENCE: 'ConvWS reference: ratio (spread)'}


class UntimeableConfig(RuntimeError):
    """A config whose model this benchmark's train step cannot run."""


def read_model_list(path: str) -> List[str]:
    """Config names of a zoo list file: one per line, ``#`` comments."""
    with open(path) as f:
        lines = [line.split('#', 1)[0].strip() for line in f]
    names = [line for line in lines if line]
    if not names:
        raise BadInputError(f'model list {path!r} names no config')
    return names


def resolve_config(name: str) -> str:
    """The file of ``scope::relative/path.py`` or of a local config path.

    Raises:
        BadInputError: For an unknown scope or a file that does not exist.
    """
    from workshop.census import resolve_configs
    if '::' not in name and not osp.isfile(name):
        raise BadInputError(f'config {name!r} does not exist (expected a '
                            'file or scope::path, e.g. mmpretrain::resnet/'
                            'resnet50_8xb32_in1k.py)')
    found = resolve_configs([name])
    if len(found) != 1:
        raise BadInputError(f'config {name!r} matches {len(found)} files; '
                            'name one')
    return found[0]


def build_plain(config_path: str) -> Tuple[nn.Module, str]:
    """The config's model, initialised as the Runner initialises it (no
    ``Pretrained`` weights: nothing is downloaded), and its scope."""
    from mmengine.model import revert_sync_batchnorm

    from mmdoconv.utils.cli import runner_model_config
    from workshop.census import init_without_pretrained
    cfg = Config.fromfile(config_path)
    scope = import_scope(cfg)
    # The upstream libraries print and warn while building: the benchmark's
    # output is its progress lines and tables.
    with DefaultScope.overwrite_default_scope(scope), \
            contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = revert_sync_batchnorm(MODELS.build(runner_model_config(cfg)))
        init_without_pretrained(model)
    return model, scope


def build_variants(config_path: str, variants: Sequence[str] = VARIANTS,
                   seed: int = 0) -> Tuple[Dict[str, nn.Module], Dict]:
    """The plain model and its DO-Conv conversion, and the conversion's
    counts."""
    torch.manual_seed(seed)
    plain, scope = build_plain(config_path)
    models, info = {}, dict(scope=scope, model=type(plain).__name__,
                            params=sum(p.numel() for p in plain.parameters()))
    if 'doconv' in variants:
        doconv = copy.deepcopy(plain)
        report = convert_to_doconv(doconv)
        models['doconv'] = doconv
        info.update(converted=len(report.converted),
                    converted_names=report.converted,
                    added_params=report.added_params)
    if 'plain' in variants:
        models['plain'] = plain
    return {v: models[v] for v in variants}, info


def with_weight_standardization(model: nn.Module, names: Sequence[str]
                                ) -> int:
    """Puts mmcv's ``ConvWS2d`` (same arguments and tensors) in place of
    the ``nn.Conv2d`` modules named; returns how many.  A timing reference
    only: weight standardization changes what the model computes."""
    from mmcv.cnn import ConvWS2d
    modules = dict(model.named_modules())
    swapped = 0
    for name in names:
        conv = modules[name]
        if type(conv) is not nn.Conv2d or conv.padding_mode != 'zeros':
            continue
        ws = ConvWS2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                      conv.stride, conv.padding, conv.dilation, conv.groups,
                      conv.bias is not None)
        ws.load_state_dict(conv.state_dict())
        parent_name, _, child = name.rpartition('.')
        setattr(modules[parent_name] if parent_name else model, child, ws)
        swapped += 1
    return swapped


def tensor_loss(outputs, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for a classifier's ``(N, classes)`` logits, else the
    mean square of every output tensor (a loss that reaches every layer the
    tensor-mode forward runs)."""
    tensors = [t for t in flatten_tensors(outputs) if t.is_floating_point()]
    if not tensors:
        raise RuntimeError('the model returns no floating tensor in '
                           "mode='tensor'")
    if len(tensors) == 1 and tensors[0].dim() == 2:
        logits = tensors[0]
        return F.cross_entropy(logits.float(), labels % logits.shape[1])
    return sum(t.float().square().mean() for t in tensors)


def train_step(model: nn.Module, inputs: torch.Tensor,
               labels: torch.Tensor, lr: float = 1e-4) -> Callable[[], None]:
    """One forward (``mode='tensor'``), loss, backward and SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = tensor_loss(model(inputs, mode='tensor'), labels)
        loss.backward()
        optimizer.step()

    return step


def random_batch(batch: int, size: int, device: torch.device,
                 seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, 1000, (batch, ), generator=generator)
    return inputs.to(device), labels.to(device)


def peak_rss_mb(config_path: str, variant: str, steps: int, batch: int,
                size: int) -> float:
    """The resident-set high-water mark, in MiB, of a fresh process that
    builds one variant and runs ``steps`` train steps."""
    command = [sys.executable, '-m', 'workshop.benchmark_configs',
               '--peak-rss', config_path, variant, '--steps', str(steps),
               '--batch', str(batch), '--size', str(size)]
    result = subprocess.run(command, cwd=_ROOT, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f'peak-RSS run of {config_path} ({variant}) '
                           'failed:\n' + result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])['peak_rss_mb']


def benchmark_config(name: str, repeats: int = 11, warmup: int = 2,
                     batch: int = 8, size: int = 224, device: str = 'cpu',
                     rss_steps: int = 2, rss_runs: int = 1,
                     python_glue: bool = False,
                     control: bool = False,
                     ws_reference: bool = False) -> Dict:
    """Train-step times (interleaved medians and per-round samples) and
    peak memory of one config's plain and DO-Conv models (and the times of
    the optional variants: ``python_glue``, ``control``,
    ``ws_reference``)."""
    config_path = resolve_config(name)
    device = torch.device(device)
    models, info = build_variants(config_path)
    if python_glue:
        models[PYTHON_GLUE] = copy.deepcopy(models['doconv'])
    if control:
        models[CONTROL] = copy.deepcopy(models['plain'])
    if ws_reference:
        models[WS_REFERENCE] = copy.deepcopy(models['plain'])
        info['ws_swapped'] = with_weight_standardization(
            models[WS_REFERENCE], info['converted_names'])
    inputs, labels = random_batch(batch, size, device)
    steps = {v: train_step(m.to(device), inputs, labels)
             for v, m in models.items()}
    if python_glue:
        steps[PYTHON_GLUE] = in_python_glue(steps[PYTHON_GLUE])
    try:
        steps['plain']()
    except Exception as error:  # noqa: BLE001 - reported in the row
        # Two-stage detectors' tensor forward reads data samples (image
        # metas) that a bare batch does not carry.
        raise UntimeableConfig(
            f"its tensor-mode train step on a bare {batch}x3x{size}x{size} "
            f'batch fails ({type(error).__name__}: '
            f'{str(error).strip().splitlines()[0] if str(error) else ""}); '
            'two-stage detectors need image metas: --models det times '
            'Faster R-CNN through the Runner') \
            from error
    train = interleaved_medians(steps, repeats, warmup, device)
    if device.type == 'cpu' and rss_steps:
        samples = {v: [] for v in VARIANTS}
        for _ in range(rss_runs):
            for variant in VARIANTS:  # alternated: glibc's heap varies
                samples[variant].append(
                    peak_rss_mb(config_path, variant, rss_steps, batch, size))
        for variant, values in samples.items():
            train[variant]['peak_mb'] = statistics.median(values)
            train[variant]['peak_mb_samples'] = values
    return dict(config=name, batch=batch, size=size, train=train, **info)


def benchmark_configs(names: List[str], repeats: int = 11, batch: int = 8,
                      size: int = 224, device: str = 'cpu',
                      rss_runs: int = 1,
                      python_glue: bool = False,
                      control: bool = False,
                      ws_reference: bool = False) -> List[Dict]:
    """:func:`benchmark_config` of each config; a config whose model cannot
    be timed this way keeps its row, with the reason, and the others run."""
    results = []
    for index, name in enumerate(names, 1):
        print(f'[config {index}/{len(names)}] {name} (batch {batch}, '
              f'{size}x{size}, {repeats} rounds)', flush=True)
        try:
            results.append(benchmark_config(name, repeats, batch=batch,
                                            size=size, device=device,
                                            rss_runs=rss_runs,
                                            python_glue=python_glue,
                                            control=control,
                                            ws_reference=ws_reference))
        except UntimeableConfig as error:
            print(f'  not timed: {error}', flush=True)
            results.append(dict(config=name, error=str(error)))
    return results


def _short_name(config: str) -> str:
    return osp.splitext(osp.basename(config.split('::')[-1]))[0]


def config_table(results: List[Dict]) -> str:
    """Markdown: train-step ms, ratio with its per-round spread, the
    parameters D adds and peak memory; where timed, the ratio of the DO-Conv
    model on the Python function (and its spread)."""
    extras = [v for v in _EXTRA_HEADERS
              if any(v in r.get('train', {}) for r in results)]
    lines = ['| config | layers converted | params: plain, D adds | train '
             'step: plain ms | DO-Conv ms | ratio | per-round spread | peak '
             'memory MiB: plain, DO-Conv (ratio) |' +
             ''.join(f' {_EXTRA_HEADERS[v]} |' for v in extras),
             '|---|---|---|---|---|---|---|---|' + '---|' * len(extras)]
    for r in results:
        if r.get('error'):
            lines.append(f'| {_short_name(r["config"])} | not timed: '
                         f'{r["error"]} | | | | | | |' + ' |' * len(extras))
            continue
        plain, doconv = r['train']['plain'], r['train']['doconv']
        low, high = ratio_spread(doconv, plain)
        peak = 'n/a'
        if plain.get('peak_mb'):
            peak = (f'{plain["peak_mb"]:.0f}, {doconv["peak_mb"]:.0f} '
                    f'({doconv["peak_mb"] / plain["peak_mb"]:.3f})')
        lines.append(
            f'| {_short_name(r["config"])} | {r["converted"]} | '
            f'{r["params"] / 1e6:.1f} M, {r["added_params"] / 1e6:.2f} M | '
            f'{plain["seconds"] * 1e3:.0f} | {doconv["seconds"] * 1e3:.0f} | '
            f'{doconv["seconds"] / plain["seconds"]:.3f} | '
            f'{low:.2f}-{high:.2f} | {peak} |' +
            ''.join(_ratio_cell(r, v) for v in extras))
    return '\n'.join(lines)


def _ratio_cell(result: Dict, variant: str) -> str:
    timed, plain = (result['train'].get(v) for v in (variant, 'plain'))
    if timed is None:
        return ' |'
    low, high = ratio_spread(timed, plain)
    # ConvWS2d replaces plain 2-D convs only: say so where others were left.
    part = ''
    if variant == WS_REFERENCE and result['ws_swapped'] < result['converted']:
        part = f', {result["ws_swapped"]} of {result["converted"]} convs'
    return (f' {timed["seconds"] / plain["seconds"]:.3f} '
            f'({low:.2f}-{high:.2f}{part}) |')


def _peak_rss_main(config_path: str, variant: str, steps: int, batch: int,
                   size: int) -> None:
    """One variant's train steps in this (fresh) process; prints JSON."""
    from workshop.benchmark_models import peak_rss_kib
    models, _ = build_variants(config_path, (variant, ))
    inputs, labels = random_batch(batch, size, torch.device('cpu'))
    step = train_step(models[variant], inputs, labels)
    for _ in range(steps):
        step()
    print(json.dumps(dict(config=config_path, variant=variant,
                          peak_rss_mb=peak_rss_kib() / 1024)))


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='peak RSS of one variant')
    parser.add_argument('--peak-rss', nargs=2, metavar=('CONFIG', 'VARIANT'),
                        required=True)
    parser.add_argument('--steps', type=int, default=2)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    args = parser.parse_args()
    config_path, variant = args.peak_rss
    if variant not in VARIANTS:
        raise SystemExit(f'error: VARIANT must be one of {VARIANTS}, but got '
                         f'{variant!r}')
    _peak_rss_main(config_path, variant, args.steps, args.batch, args.size)
