"""Helpers to run the project's configs and tools small and fast in tests."""
import os
import os.path as osp
import re
import subprocess
import sys
from typing import Dict, List

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.dirname(osp.abspath(__file__))


def config_path(*parts: str) -> str:
    return osp.join(ROOT, 'configs', *parts)


def _without_workers(options: Dict) -> Dict:
    """Load data in the test process: worker start-up dominates tiny runs."""
    for split in ('train', 'val', 'test'):
        options[f'{split}_dataloader.num_workers'] = 0
        options[f'{split}_dataloader.persistent_workers'] = False
    return options


def detection_options(coco_root: str, train_images: int = 4,
                      val_images: int = 4, scale=(320, 256)) -> Dict:
    """cfg-options that run mmdet's Faster R-CNN configs on the synthetic
    COCO set with small images, one epoch and no pretrained download."""
    root = coco_root.rstrip('/') + '/'
    options = {
        'model.backbone.init_cfg': None,
        # A few iterations give low scores: keep every box so that there are
        # detections to compare and CocoMetric has something to evaluate.
        'model.test_cfg.rcnn.score_thr': 0.0,
        'train_dataloader.dataset.data_root': root,
        'train_dataloader.dataset.indices': train_images,
        'train_dataloader.dataset.pipeline.2.scale': scale,
        'train_cfg.max_epochs': 1,
        'randomness.seed': 0,
        'default_hooks.logger.interval': 1,
    }
    for split in ('val', 'test'):
        options.update({
            f'{split}_dataloader.dataset.data_root': root,
            f'{split}_dataloader.dataset.indices': val_images,
            f'{split}_dataloader.dataset.pipeline.1.scale': scale,
            f'{split}_evaluator.ann_file':
            root + 'annotations/instances_val2017.json',
        })
    return _without_workers(options)


def as_cli(options: Dict) -> List[str]:
    """``--cfg-options k=v ...`` arguments for the tools."""
    from mmdoconv.tooling import cfg_options_args
    return cfg_options_args(options)


def run_tool(*args: str, env_extra: Dict = None,
             timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python tools/...`` (or a shell script) from the repository root."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]),
               **(env_extra or {}))
    command = list(args) if args[0].endswith('.sh') else [sys.executable,
                                                          *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f'{" ".join(args[:2])} failed:\n'
                             f'{result.stdout[-3000:]}\n{result.stderr[-5000:]}')
    return result


def logged_metrics(text: str, prefix: str) -> Dict[str, float]:
    """The last ``prefix/name: value`` metrics an mmengine log printed."""
    return {name: float(value) for name, value in re.findall(
        rf'({re.escape(prefix)}/\w+): (-?[\d.]+)', text)}


def segmentation_options(dataset: str, root: str, crop=(64, 128),
                         iters: int = 2, val_images: int = 2) -> Dict:
    """cfg-options that run mmseg's DeepLabv3 configs on a synthetic set with
    small crops, ``iters`` iterations and no pretrained download.

    Args:
        dataset: 'cityscapes' or 'voc'.
    """
    root = root.rstrip('/') + '/'
    height, width = crop
    # mmseg's scales are (long, short) edges of the resize.
    scale = (4 * width, 2 * height) if dataset == 'cityscapes' else (
        4 * max(crop), max(crop))
    options = {
        'model.pretrained': None,
        'model.data_preprocessor.size': crop,
        'train_cfg.max_iters': iters,
        'train_cfg.val_interval': iters,
        'default_hooks.checkpoint.interval': iters,
        'default_hooks.logger.interval': 1,
        'randomness.seed': 0,
    }
    if dataset == 'cityscapes':
        train_datasets = ['train_dataloader.dataset']
    else:  # VOC aug trains on ConcatDataset([train, aug])
        train_datasets = [f'train_dataloader.dataset.datasets.{i}'
                          for i in (0, 1)]
    for prefix in train_datasets:
        options.update({
            f'{prefix}.data_root': root,
            f'{prefix}.pipeline.2.scale': scale,
            f'{prefix}.pipeline.3.crop_size': crop,
        })
        if dataset == 'voc':
            options[f'{prefix}.pipeline.6.size'] = crop
    for split in ('val', 'test'):
        options.update({
            f'{split}_dataloader.dataset.data_root': root,
            f'{split}_dataloader.dataset.indices': val_images,
            f'{split}_dataloader.dataset.pipeline.1.scale': scale,
        })
    return _without_workers(options)


def classification_options(imagenet_root: str, size: int = 32,
                           batch_size: int = 4) -> Dict:
    """cfg-options that run mmpretrain's ImageNet ResNet configs on the
    synthetic ImageNet folders for one short epoch at ``size`` pixels."""
    root = imagenet_root.rstrip('/')
    options = {
        'train_dataloader.dataset.data_root': root,
        'train_dataloader.dataset.pipeline.1.scale': size,
        'train_dataloader.batch_size': batch_size,
        'train_cfg.max_epochs': 1,
        'randomness.seed': 0,
        'default_hooks.logger.interval': 1,
    }
    for split in ('val', 'test'):
        options.update({
            f'{split}_dataloader.dataset.data_root': root,
            f'{split}_dataloader.dataset.pipeline.1.scale': size + size // 8,
            f'{split}_dataloader.dataset.pipeline.2.crop_size': size,
            f'{split}_dataloader.batch_size': batch_size,
        })
    return _without_workers(options)
