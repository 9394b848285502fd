"""Small-run recipes: ``--cfg-options`` that run the project's configs on the
synthetic datasets (workshop/synthetic.py) small and fast.

One copy, used by the tests, the demo (tools/misc/demo.py) and the model
benchmark.  The pipeline indices (``pipeline.2.scale``) are those of the
upstream configs the project's configs inherit.
"""
from typing import Dict, List, Optional


def without_workers(options: Dict) -> Dict:
    """Load data in the main process: worker start-up dominates tiny runs."""
    for split in ('train', 'val', 'test'):
        options[f'{split}_dataloader.num_workers'] = 0
        options[f'{split}_dataloader.persistent_workers'] = False
    return options


def detection_options(coco_root: str, train_images: Optional[int] = 4,
                      val_images: Optional[int] = 4, scale=(320, 256),
                      epochs: int = 1, light_heads: bool = False) -> Dict:
    """cfg-options that run mmdet's Faster R-CNN configs on the synthetic
    COCO set with small images, ``epochs`` epochs and no pretrained download.

    Args:
        train_images: Limit of the train set (None: all of it).
        val_images: Limit of the val/test sets (None: all of them).
        light_heads: Sample, keep and classify fewer boxes
            (:func:`light_detection_heads`).
    """
    root = coco_root.rstrip('/') + '/'
    options = {
        'model.backbone.init_cfg': None,
        # A few iterations give low scores: keep every box so that there are
        # detections to compare and CocoMetric has something to evaluate.
        'model.test_cfg.rcnn.score_thr': 0.0,
        'train_dataloader.dataset.data_root': root,
        'train_dataloader.dataset.pipeline.2.scale': scale,
        'train_cfg.max_epochs': epochs,
        'randomness.seed': 0,
        'default_hooks.logger.interval': 1,
    }
    if train_images is not None:
        options['train_dataloader.dataset.indices'] = train_images
    for split in ('val', 'test'):
        if val_images is not None:
            options[f'{split}_dataloader.dataset.indices'] = val_images
        options.update({
            f'{split}_dataloader.dataset.data_root': root,
            f'{split}_dataloader.dataset.pipeline.1.scale': scale,
            f'{split}_evaluator.ann_file':
            root + 'annotations/instances_val2017.json',
        })
    if light_heads:
        options.update(light_detection_heads())
    return without_workers(options)


def light_detection_heads() -> Dict:
    """cfg-options for a Faster R-CNN whose RPN and RoI stage do less work.

    On a CPU the RoI stage dominates a small run: RoIAlign over 1000
    proposals per image and a 12544 x 1024 FC layer cost more than the
    backbone.  Fewer sampled and kept boxes and a 256-wide FC change no conv
    (DO-Conv layers, counts and folding are those of the full model).
    """
    return {
        'model.roi_head.bbox_head.fc_out_channels': 256,
        'model.train_cfg.rpn.sampler.num': 64,
        'model.train_cfg.rpn_proposal.nms_pre': 600,
        'model.train_cfg.rpn_proposal.max_per_img': 300,
        'model.train_cfg.rcnn.sampler.num': 128,
        'model.test_cfg.rpn.nms_pre': 600,
        'model.test_cfg.rpn.max_per_img': 300,
    }


def segmentation_options(dataset: str, root: str, crop=(64, 128),
                         iters: int = 2, val_images: Optional[int] = 2,
                         scale: Optional[tuple] = None) -> Dict:
    """cfg-options that run mmseg's DeepLabv3 configs on a synthetic set with
    small crops, ``iters`` iterations and no pretrained download.

    Args:
        dataset: 'cityscapes' or 'voc'.
        val_images: Limit of the val/test sets (None: all of them).
        scale: The resize scale (long, short edge); by default one that
            leaves room for the crop.
    """
    root = root.rstrip('/') + '/'
    height, width = crop
    # mmseg's scales are (long, short) edges of the resize.
    if scale is None:
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
        if val_images is not None:
            options[f'{split}_dataloader.dataset.indices'] = val_images
        options.update({
            f'{split}_dataloader.dataset.data_root': root,
            f'{split}_dataloader.dataset.pipeline.1.scale': scale,
        })
    return without_workers(options)


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
    return without_workers(options)


def as_cli(options: Dict) -> List[str]:
    """``--cfg-options k=v ...`` arguments that mmengine's DictAction parses
    back into ``options`` (tuples and lists included)."""
    args = ['--cfg-options']
    for key, value in options.items():
        if isinstance(value, (tuple, list)):
            inner = ','.join(str(v) for v in value)
            value = f'({inner})' if isinstance(value, tuple) else f'[{inner}]'
        args.append(f'{key}={value}')
    return args
