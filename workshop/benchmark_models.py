"""Model-level timing: the paper's task configs, baseline against DO-Conv.

Faster R-CNN R50-FPN (batch 2, 512x512) and DeepLabv3 R50-D8 (batch 2,
512x512 crops) are built from this project's configs and fed real batches of
the synthetic datasets through the configs' own pipelines.  Train step =
forward, loss, backward and optimizer step (``model.train_step``);
inference = ``model.test_step``.  Variants are interleaved.
"""
import copy
import os.path as osp
import tempfile
from typing import Dict, List

import torch
from mmengine.config import Config

from mmdoconv import fold_doconv
from mmdoconv.utils.benchmark import interleaved_medians
from mmdoconv.utils.cli import build_runner

from .recipes import detection_options, segmentation_options
from .synthetic import write_cityscapes, write_coco

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
}


def _options(kind: str, data_root: str) -> Dict:
    """The small-run recipes at the benchmark's size (batch 2, 512x512)."""
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


def _runner(config: str, options: Dict, work_dir: str):
    cfg = Config.fromfile(osp.join(_ROOT, 'configs', config))
    cfg.merge_from_dict(options)
    cfg.work_dir = work_dir
    cfg.custom_hooks = []
    return build_runner(cfg)


def benchmark_model(kind: str, repeats: int = 5, warmup: int = 2,
                    device: str = 'cpu') -> Dict:
    """Times (and CUDA peak memory) of one model pair."""
    spec = MODELS[kind]
    device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        data_root = osp.join(tmp, kind) + '/'
        if kind == 'det':
            write_coco(data_root, num_train=2, num_val=2, size=(512, 512),
                       progress=lambda m: None)
        else:
            write_cityscapes(data_root, num_train=2, num_val=2,
                             size=(512, 1024), progress=lambda m: None)
        options = _options(kind, data_root)
        runners = {
            variant: _runner(spec[variant], options, osp.join(tmp, variant))
            for variant in ('baseline', 'doconv')
        }
        train_batch = next(iter(runners['baseline'].train_dataloader))
        val_batch = next(iter(runners['baseline'].val_dataloader))
        models, optim_wrappers = {}, {}
        for variant, runner in runners.items():
            model = runner.model.to(device)
            models[variant] = model
            optim_wrappers[variant] = runner.build_optim_wrapper(
                runner.cfg.optim_wrapper)

        def train_step(variant):
            def step():
                models[variant].train()
                models[variant].train_step(train_batch,
                                           optim_wrappers[variant])
            return step

        train = interleaved_medians(
            {v: train_step(v) for v in models}, repeats, warmup, device)
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
    return dict(model=spec['name'], configs=dict(baseline=spec['baseline'],
                                                 doconv=spec['doconv']),
                train=train, inference=inference)


def benchmark_models(kinds: List[str], repeats: int = 5,
                     device: str = 'cpu') -> List[Dict]:
    results = []
    for index, kind in enumerate(kinds, 1):
        print(f'[model {index}/{len(kinds)}] {MODELS[kind]["name"]}',
              flush=True)
        results.append(benchmark_model(kind, repeats, device=device))
    return results


def model_table(results: List[Dict]) -> str:
    """Markdown: times in s, ratios against the baseline config."""
    lines = ['| model | train step: baseline s | doconv-task (ratio) | peak '
             'memory ratio | inference: baseline s | unfolded eval (ratio) | '
             'folded (ratio) |', '|---|---|---|---|---|---|---|']
    for r in results:
        train, infer = r['train'], r['inference']
        base_t, base_i = train['baseline']['seconds'], infer['baseline'][
            'seconds']
        peak = 'n/a (CPU)'
        if train['baseline']['peak_mb']:
            peak = f'{train["doconv"]["peak_mb"] / train["baseline"]["peak_mb"]:.2f}'
        lines.append(
            f'| {r["model"]} | {base_t:.3f} | {train["doconv"]["seconds"]:.3f}'
            f' ({train["doconv"]["seconds"] / base_t:.2f}) | {peak} | '
            f'{base_i:.3f} | {infer["doconv"]["seconds"]:.3f} '
            f'({infer["doconv"]["seconds"] / base_i:.2f}) | '
            f'{infer["folded"]["seconds"]:.3f} '
            f'({infer["folded"]["seconds"] / base_i:.2f}) |')
    return '\n'.join(lines)
