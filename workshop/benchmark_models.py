"""Model-level timing: the paper's configs, baseline against DO-Conv.

Faster R-CNN R50-FPN (batch 2, 512x512), DeepLabv3 R50-D8 (batch 2, 512x512
crops) and ResNet-50 on ImageNet (batch 32, 224x224) are built from this
project's configs and fed real batches of the synthetic datasets through the
configs' own pipelines.  Train step = forward, loss, backward and optimizer
step (``model.train_step``); inference = ``model.test_step``.  Variants are
interleaved in one process.  CPU peak memory is the resident-set high-water
mark of a fresh process per variant that runs the same train steps
(``python -m workshop.benchmark_models --peak-rss KIND VARIANT``).
"""
import argparse
import contextlib
import copy
import io
import json
import logging
import os.path as osp
import resource
import statistics
import subprocess
import sys
import tempfile
import warnings
from typing import Dict, List, Optional

import torch
from mmengine.config import Config

from mmdoconv import fold_doconv
from mmdoconv.engine.amp import enable_amp
from workshop.benchmark_layers import interleaved_medians, ratio_spread
from mmdoconv.utils.cli import build_runner

from .recipes import (classification_options, detection_options,
                      segmentation_options)
from .synthetic import write_cityscapes, write_coco, write_imagenet

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MODELS = {
    'det': dict(
        name='Faster R-CNN R50-FPN',
        baseline='faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
        doconv='faster_rcnn/faster-rcnn_r50-doconv-task_fpn_1x_coco.py'),
    'seg': dict(
        name='DeepLabv3 R50-D8',
        baseline='deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py',
        doconv='deeplabv3/deeplabv3_r50-d8-doconv-task_4xb2-80k_cityscapes-'
        '512x1024.py'),
    'cls': dict(
        name='ResNet-50 ImageNet',
        baseline='resnet/resnet50_8xb32_in1k.py',
        doconv='resnet/resnet50-doconv_8xb32_in1k.py'),
}
#: ``--peak-rss`` variants: the two configs, and the DO-Conv config with
#: ``recompute_kernel=False`` (W' kept for the backward).
PEAK_RSS_VARIANTS = ('baseline', 'doconv', 'doconv-keep-kernel')
BATCH = dict(det='batch 2, 512x512', seg='batch 2, 512x512',
             cls='batch 32, 224x224')


def _options(kind: str, data_root: str) -> Dict:
    """The small-run recipes at the benchmark's sizes (:data:`BATCH`)."""
    if kind == 'cls':
        return classification_options(data_root, size=224, batch_size=32)
    batches = {'train_dataloader.batch_size': 2,
               'val_dataloader.batch_size': 2}
    if kind == 'det':
        return dict(
            detection_options(data_root, train_images=None, val_images=None,
                              scale=(512, 512)), **batches, **{
                'train_dataloader.dataset.pipeline.3.prob': 0.0,
                # the config's own test threshold, not the tests' "keep all"
                'model.test_cfg.rcnn.score_thr': 0.05,
            })
    return dict(
        segmentation_options('cityscapes', data_root, crop=(512, 512),
                             scale=(1024, 512), val_images=None), **batches,
        **{
            'train_dataloader.dataset.pipeline.2.ratio_range': (1.0, 1.0),
            'model.test_cfg.mode': 'whole',
        })


def _runner(config: str, options: Dict, work_dir: str, amp: bool = False):
    cfg = Config.fromfile(osp.join(_ROOT, 'configs', config))
    cfg.merge_from_dict(options)
    if amp:  # what the tools' --amp does
        enable_amp(cfg)
    cfg.work_dir = work_dir
    cfg.custom_hooks = []
    cfg.log_level = 'ERROR'  # the benchmark prints only its own tables
    runner = build_runner(cfg)
    # The Runner's logger is a handler-owning mmengine logger; its INFO
    # lines (hook tables, environment) are not the benchmark's output.
    runner.logger.setLevel(logging.ERROR)
    return runner


def _write_data(kind: str, data_root: str) -> None:
    quiet = dict(progress=lambda message: None)
    if kind == 'det':
        write_coco(data_root, num_train=2, num_val=2, size=(512, 512),
                   **quiet)
    elif kind == 'seg':
        write_cityscapes(data_root, num_train=2, num_val=2, size=(512, 1024),
                         **quiet)
    else:
        write_imagenet(data_root, num_train=32, num_val=2, size=256, **quiet)


def _build(kind: str, variants, tmp: str, device: torch.device,
           amp: bool = False):
    """Models, optimizer wrappers and one train / val batch."""
    spec = MODELS[kind]
    data_root = osp.join(tmp, kind) + '/'
    _write_data(kind, data_root)
    options = _options(kind, data_root)
    # pycocotools prints while the datasets load and the upstream libraries
    # warn about their own APIs; the benchmark's output is its tables and
    # progress lines.
    with contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter('ignore')
        runners = {variant: _runner(spec[variant], options,
                                    osp.join(tmp, variant), amp)
                   for variant in variants}
        first = runners[variants[0]]
        train_batch = next(iter(first.train_dataloader))
        val_batch = next(iter(first.val_dataloader))
    models, optim_wrappers = {}, {}
    for variant, runner in runners.items():
        models[variant] = runner.model.to(device)
        optim_wrappers[variant] = runner.build_optim_wrapper(
            runner.cfg.optim_wrapper)
    return models, optim_wrappers, train_batch, val_batch


def _train_step(model, optim_wrapper, batch):
    def step():
        model.train()
        model.train_step(batch, optim_wrapper)
    return step


def peak_rss_mb(kind: str, variant: str, steps: int,
                amp: bool = False) -> float:
    """Run ``steps`` train steps of one variant in a fresh process and
    return its resident-set high-water mark in MiB."""
    command = [sys.executable, '-m', 'workshop.benchmark_models',
               '--peak-rss', kind, variant, '--steps', str(steps)]
    if amp:
        command.append('--amp')
    result = subprocess.run(command, cwd=_ROOT, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f'peak-RSS run of {kind}/{variant} failed:\n'
                           + result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])['peak_rss_mb']


def benchmark_model(kind: str, repeats: int = 5, warmup: int = 2,
                    device: str = 'cpu', rss_steps: Optional[int] = 3,
                    amp: bool = False, rss_runs: int = 1) -> Dict:
    """Times and peak memory (CUDA allocator peak, or the CPU resident-set
    peak of a fresh process per variant, median of ``rss_runs`` processes
    run alternately) of one model pair.  With ``amp``
    the train steps use the tools' ``--amp`` optimizer wrapper; inference
    stays fp32."""
    spec = MODELS[kind]
    device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        models, optim_wrappers, train_batch, val_batch = _build(
            kind, ('baseline', 'doconv'), tmp, device, amp)
        train = interleaved_medians(
            {v: _train_step(models[v], optim_wrappers[v], train_batch)
             for v in models}, repeats, warmup, device)
        folded = copy.deepcopy(models['doconv'])
        fold_doconv(folded)
        eval_models = dict(baseline=models['baseline'],
                           doconv=models['doconv'], folded=folded)

        def test_step(model):
            def step():
                model.eval()
                with torch.no_grad():
                    model.test_step(val_batch)
            return step

        inference = interleaved_medians(
            {v: test_step(m) for v, m in eval_models.items()}, repeats,
            warmup, device)
    if device.type == 'cpu' and rss_steps:
        # glibc's heap makes one process's peak vary by about 2 % from run
        # to run: alternate the variants and take the median.
        peaks = {'baseline': [], 'doconv': []}
        for _ in range(rss_runs):
            for variant, samples in peaks.items():
                samples.append(peak_rss_mb(kind, variant, rss_steps, amp))
        for variant, samples in peaks.items():
            train[variant]['peak_mb'] = statistics.median(samples)
            train[variant]['peak_mb_samples'] = samples
    return dict(model=spec['name'], batch=BATCH[kind],
                configs=dict(baseline=spec['baseline'],
                             doconv=spec['doconv']),
                train=train, inference=inference)


def benchmark_models(kinds: List[str], repeats: int = 5,
                     device: str = 'cpu', amp: bool = False,
                     rss_runs: int = 1) -> List[Dict]:
    results = []
    for index, kind in enumerate(kinds, 1):
        print(f'[model {index}/{len(kinds)}] {MODELS[kind]["name"]} '
              f'({BATCH[kind]}, {repeats} repeats per variant)', flush=True)
        results.append(benchmark_model(kind, repeats, device=device,
                                       amp=amp, rss_runs=rss_runs))
    return results


def model_table(results: List[Dict]) -> str:
    """Markdown: times in s, ratios against the baseline config."""
    lines = ['| model (batch) | train step: baseline s | DO-Conv s (ratio, '
             'spread) | peak memory MiB: baseline, DO-Conv (ratio, spread) | '
             'inference: baseline s | unfolded eval (ratio) | folded (ratio) |',
             '|---|---|---|---|---|---|---|']
    for r in results:
        train, infer = r['train'], r['inference']
        base_t, base_i = train['baseline']['seconds'], infer['baseline'][
            'seconds']
        peak = 'n/a'
        if train['baseline'].get('peak_mb'):
            base_mb, doconv_mb = (train[v]['peak_mb']
                                  for v in ('baseline', 'doconv'))
            peak = f'{base_mb:.0f}, {doconv_mb:.0f} ({doconv_mb / base_mb:.3f}'
            samples = [train[v].get('peak_mb_samples') or []
                       for v in ('baseline', 'doconv')]
            if len(samples[0]) > 1:
                ratios = [d / b for b, d in zip(*samples)]
                peak += f', {min(ratios):.3f}-{max(ratios):.3f}'
            peak += ')'
        low, high = ratio_spread(train['doconv'], train['baseline'])
        lines.append(
            f'| {r["model"]} ({r.get("batch", "")}) | {base_t:.3f} | '
            f'{train["doconv"]["seconds"]:.3f} '
            f'({train["doconv"]["seconds"] / base_t:.3f}, {low:.2f}-{high:.2f})'
            f' | {peak} | '
            f'{base_i:.3f} | {infer["doconv"]["seconds"]:.3f} '
            f'({infer["doconv"]["seconds"] / base_i:.2f}) | '
            f'{infer["folded"]["seconds"]:.3f} '
            f'({infer["folded"]["seconds"] / base_i:.2f}) |')
    return '\n'.join(lines)


def _peak_rss_main(kind: str, variant: str, steps: int, amp: bool) -> None:
    """One variant's train steps in this (fresh) process; prints JSON."""
    from mmdoconv import DOConv2d
    config_variant = 'baseline' if variant == 'baseline' else 'doconv'
    with tempfile.TemporaryDirectory() as tmp:
        models, optim_wrappers, train_batch, _ = _build(
            kind, (config_variant, ), tmp, torch.device('cpu'), amp)
        model = models[config_variant]
        if variant == 'doconv-keep-kernel':
            # DO-Conv as before recomputation: autograd keeps each W'.
            for module in model.modules():
                if isinstance(module, DOConv2d):
                    module.recompute_kernel = False
        step = _train_step(model, optim_wrappers[config_variant],
                           train_batch)
        for _ in range(steps):
            step()
    print(json.dumps(dict(kind=kind, variant=variant,
                          peak_rss_mb=peak_rss_kib() / 1024)))


def peak_rss_kib() -> int:
    """This process's resident-set high-water mark (VmHWM).

    Not ``getrusage().ru_maxrss``: Linux carries the parent's high-water mark
    over fork and exec into it, so every child of a large benchmark process
    would report the parent's peak.
    """
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='peak RSS of one variant')
    parser.add_argument('--peak-rss', nargs=2, metavar=('KIND', 'VARIANT'),
                        required=True)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--amp', action='store_true')
    args = parser.parse_args()
    kind, variant = args.peak_rss
    if kind not in MODELS or variant not in PEAK_RSS_VARIANTS:
        raise SystemExit(f'error: KIND must be one of {sorted(MODELS)} and '
                         f'VARIANT one of {PEAK_RSS_VARIANTS}, got {kind} '
                         f'{variant}')
    _peak_rss_main(kind, variant, args.steps, args.amp)
