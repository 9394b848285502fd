"""The DO-Conv census: does the switch work on a model zoo's configs?

For one config, with no pretrained weights (nothing is downloaded):

1. build the model, initialise it as the Runner does (``init_weights()``,
   with every ``Pretrained`` ``init_cfg`` left out), and convert it as
   ``runner_type='DOConvRunner'`` does;
2. count the non-pointwise convs converted and those left plain, naming each
   left-over module and why;
3. run one training step on a small synthetic batch of the structure the
   config's own packing transform produces (boxes and masks, a label map, or a
   class label), with random non-zero D: the loss must be finite and every
   trainable D must get a non-zero gradient wherever its W gets one (a layer
   this one step's loss does not reach at all, or whose W is initialised to
   zero so that D's first gradient is zero by the maths, is recorded, not
   failed);
4. fold, and compare the exported outputs (the ``mode='tensor'`` forward, or
   the dense part where that cannot run without proposals) and the
   ``mode='predict'`` results (which run every head) of the unfolded and the
   folded model: they must be equal;
5. load the folded state dict with ``strict=True`` into the model built from
   the plain config and check it computes the same outputs.
"""
import copy
import glob
import logging
import math
import os.path as osp
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmengine.registry import MODELS, TRANSFORMS, DefaultScope
from torch import nn

from mmdoconv import DOConvLayer, convert_to_doconv
from mmdoconv.cnn.conversion import conv_kind
from mmdoconv.utils.compare import flatten_tensors, max_abs_difference
from mmdoconv.deploy.export import (TensorGraph, dense_heads,
                                    pack_sample)
from mmdoconv.deploy.fold import fold_doconv
from mmdoconv.utils.cli import (BadInputError, import_scope,
                                runner_model_config)

#: Input size of the synthetic batch per scope (height, width).
BATCH_SHAPES = dict(mmdet=(256, 320), mmseg=(256, 256),
                    mmpretrain=(224, 224), mmpose=(256, 256))
#: The OpenMMLab scopes the census reads configs of, and their packages.
SCOPE_PACKAGES = dict(mmpretrain='mmpretrain', mmdet='mmdet',
                      mmseg='mmsegmentation', mmpose='mmpose')
#: Transforms the pose census leaves out of a config's pipeline: the image
#: is given, the mixing ones draw further images from a dataset, and
#: RTMPose's photometric ``Albumentation`` needs albumentations 1.x (2.x
#: renamed the arguments mmpose 1.3 passes, and its opencv-headless
#: dependency would replace this environment's cv2).  None of them changes
#: what the batch holds.
_POSE_SKIPPED = ('LoadImage', 'Mosaic', 'YOLOXMixUp', 'Albumentation')
#: Images per synthetic batch (BatchNorm needs more than one).
BATCH_SIZE = 2


@dataclass
class CensusRow:
    """The census of one config."""
    config: str
    model: str = ''
    converted: int = 0
    added_params: int = 0
    left_plain: Dict[str, str] = field(default_factory=dict)
    other_convs: Dict[str, str] = field(default_factory=dict)
    loss: float = float('nan')
    trainable_d: int = 0
    d_without_gradient: List[str] = field(default_factory=list)
    unreached: List[str] = field(default_factory=list)
    zero_weight: List[str] = field(default_factory=list)
    compared: str = ''
    fold_max_diff: float = float('nan')
    plain_max_diff: float = float('nan')
    strict_load: bool = False
    input_shape: tuple = ()
    seconds: float = 0.0
    error: str = ''

    @property
    def problems(self) -> List[str]:
        """The checks this config fails (empty: it passes)."""
        if self.error:
            return [self.error]
        checks = [
            (self.converted > 0, 'nothing converted'),
            (not self.left_plain,
             f'{len(self.left_plain)} non-pointwise convs left plain'),
            (math.isfinite(self.loss), f'loss {self.loss}'),
            (not self.d_without_gradient,
             f'{len(self.d_without_gradient)} D without gradient where W '
             'has one'),
            (self.fold_max_diff == 0.0,
             f'fold changes outputs by {self.fold_max_diff:.3g}'),
            (self.strict_load, 'folded weights do not load strictly'),
            (self.plain_max_diff <= 1e-4,
             f'plain model differs by {self.plain_max_diff:.3g}'),
        ]
        return [message for passed, message in checks if not passed]

    @property
    def ok(self) -> bool:
        return not self.problems


def resolve_configs(patterns: Sequence[str]) -> List[str]:
    """Config paths of OpenMMLab scope globs (``'mmdet::retinanet/*.py'``)
    and local globs, sorted per pattern.

    Raises:
        BadInputError: For an unknown scope or a pattern matching nothing.
    """
    from mmengine.utils import get_installed_path
    paths = []
    for pattern in patterns:
        if '::' in pattern:
            scope, relative = pattern.split('::', 1)
            package = SCOPE_PACKAGES.get(scope)
            if package is None:
                raise BadInputError(
                    f'scope of {pattern!r} must be one of '
                    f'{sorted(SCOPE_PACKAGES)}, but got {scope!r}')
            root = osp.join(get_installed_path(package), '.mim', 'configs')
            found = sorted(glob.glob(osp.join(root, relative)))
        else:
            found = sorted(glob.glob(pattern))
        if not found:
            raise BadInputError(f'config pattern {pattern!r} matches no file')
        paths += found
    return paths


def _synthetic_results(scope: str, height: int, width: int,
                       rng: np.random.Generator, with_mask: bool) -> dict:
    """Ground truth of every kind a packing transform may pick up."""
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    # Objects at three scales, so that every level of a feature pyramid has
    # positive anchors (the largest nearly fills the image).
    boxes = np.array([[16, 24, 80, 72], [120, 40, 300, 180],
                      [8, 8, width - 8, height - 8]], dtype=np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
    results = dict(img=image, gt_bboxes_labels=np.array([0, 1, 2]),
                   gt_ignore_flags=np.zeros(3, dtype=bool), gt_label=1,
                   # RandomCenterCropPad's record of the image in its canvas
                   # (top, bottom, left, right), read by CenterNet.
                   border=np.array([0, height, 0, width], dtype=np.float32))
    seg = np.zeros((height, width), dtype=np.uint8)
    for label, (x1, y1, x2, y2) in reversed(
            list(enumerate(boxes.astype(int), start=1))):
        seg[y1:y2, x1:x2] = label  # the largest first, the others on top
    results['gt_seg_map'] = seg
    # Class boundaries, as mmseg's GenerateEdge writes them for PIDNet.
    edge = np.zeros_like(seg)
    edge[:, 1:] |= seg[:, 1:] != seg[:, :-1]
    edge[1:, :] |= seg[1:, :] != seg[:-1, :]
    results['gt_edge_map'] = edge
    if scope == 'mmdet':
        from mmdet.structures.bbox import HorizontalBoxes
        from mmdet.structures.mask import BitmapMasks
        results['gt_bboxes'] = HorizontalBoxes(boxes)
    if scope == 'mmdet' and with_mask:
        masks = np.stack([seg == label for label in (1, 2, 3)]).astype(
            np.uint8)
        results['gt_masks'] = BitmapMasks(masks, height, width)
    return results


def _pipeline(cfg: Config, split: str) -> list:
    dataloader = cfg.get(f'{split}_dataloader') or {}
    dataset = dataloader.get('dataset', {})
    while 'pipeline' not in dataset and 'dataset' in dataset:
        dataset = dataset['dataset']  # a wrapper (RepeatDataset, ...)
    return dataset.get('pipeline') or cfg.get(f'{split}_pipeline') or []


def _loads_masks(pipeline: list) -> bool:
    return any('LoadAnnotations' in str(t.get('type')) and t.get('with_mask')
               for t in pipeline)


def batch_shape(cfg: Config, scale: int = 1) -> tuple:
    """Input (height, width): the fixed size a test pipeline resizes to
    without keeping the ratio (SSD's 300x300, YOLOv3's 320x320), else the
    scope's small default times ``scale``."""
    for transform in _pipeline(cfg, 'test'):
        if 'Resize' in str(transform.get('type')) and \
                transform.get('keep_ratio') is False:
            scale = transform.get('scale')
            if isinstance(scale, (tuple, list)) and len(scale) == 2:
                width, height = scale  # OpenMMLab scales are (w, h)
                return int(height), int(width)
    height, width = BATCH_SHAPES[cfg.default_scope]
    return height * scale, width * scale


def _pose_results(cfg: Config, split: str, height: int, width: int,
                  rng: np.random.Generator) -> dict:
    """A COCO-keypoints sample as mmpose's datasets hand it to a pipeline:
    two people (one for top-down configs), 17 visible keypoints each, and
    the dataset's meta information."""
    from mmengine.utils import get_installed_path
    from mmpose.datasets.datasets.utils import parse_pose_metainfo
    meta = parse_pose_metainfo(dict(from_file=osp.join(
        get_installed_path('mmpose'), '.mim', 'configs', '_base_',
        'datasets', 'coco.py')))
    people = 2
    dataloader = cfg.get(f'{split}_dataloader') or {}
    if dataloader.get('dataset', {}).get('data_mode', 'topdown') == \
            'topdown':
        people = 1  # top-down pipelines crop one person per sample
    boxes = np.array([[0.2, 0.1, 0.8, 0.9], [0.1, 0.05, 0.55, 0.8]],
                     dtype=np.float32)[:people] * [width, height, width, height]
    count = meta['num_keypoints']
    keypoints = np.stack([
        rng.uniform(box[[0, 1]], box[[2, 3]], (count, 2)) for box in boxes
    ]).astype(np.float32)
    results = dict(
        img=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        img_shape=(height, width), ori_shape=(height, width), img_id=0,
        img_path='inputs.png', bbox=boxes, bbox_score=np.ones(people,
                                                              np.float32),
        keypoints=keypoints,
        keypoints_visible=np.ones((people, count), np.float32),
        num_keypoints=np.full(people, count), iscrowd=np.zeros(people),
        area=np.prod(boxes[:, 2:] - boxes[:, :2], axis=1),
        id=np.arange(people), category_id=np.ones(people, dtype=np.int64),
        invalid_segs=[],
        raw_ann_info=None)
    if people == 1:
        results.update(id=0, category_id=1)
    for key in ('flip_indices', 'flip_pairs', 'upper_body_ids',
                'lower_body_ids', 'dataset_keypoint_weights', 'sigmas',
                'skeleton_links'):
        results[key] = meta[key]
    return results


def _pose_batch(model: nn.Module, cfg: Config, training: bool, seed: int,
                scale: int) -> dict:
    """mmpose's targets (heatmaps, SimCC labels, displacements) come from
    the pipeline's ``GenerateTarget`` and the crops from its affine
    transforms: the whole pipeline runs on the synthetic sample."""
    from mmengine.dataset import Compose
    split, other = ('train', 'val') if training else ('val', 'train')
    if not _pipeline(cfg, split):
        split = other
    pipeline = [t for t in _pipeline(cfg, split)
                if t.get('type') not in _POSE_SKIPPED]
    height, width = batch_shape(cfg, scale)
    rng = np.random.default_rng(seed)
    with DefaultScope.overwrite_default_scope('mmpose'):
        transforms = Compose(pipeline)
        packed = [transforms(_pose_results(cfg, split, height, width, rng))
                  for _ in range(BATCH_SIZE)]
    return model.data_preprocessor(
        dict(inputs=[p['inputs'] for p in packed],
             data_samples=[p['data_samples'] for p in packed]), training)


def synthetic_batch(model: nn.Module, cfg: Config, scope: str,
                    training: bool, seed: int = 0, scale: int = 1) -> dict:
    """A preprocessed batch as the config's own packing transform (for
    mmpose: its pipeline) and the model's data preprocessor make it."""
    if scope == 'mmpose':
        return _pose_batch(model, cfg, training, seed, scale)
    # The train packer gives the loss its targets; the test packer gives
    # predict the meta keys it reads (CenterNet's border).
    first, second = ('train', 'test') if training else ('test', 'train')
    pipeline = _pipeline(cfg, first) or _pipeline(cfg, second)
    with DefaultScope.overwrite_default_scope(scope):
        pack = TRANSFORMS.build(pipeline[-1])
    height, width = batch_shape(cfg, scale)
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for _ in range(BATCH_SIZE):
        packed = pack_sample(pack, **_synthetic_results(
            scope, height, width, rng, _loads_masks(pipeline)))
        inputs.append(packed['inputs'])
        samples.append(packed['data_samples'])
    return model.data_preprocessor(
        dict(inputs=inputs, data_samples=samples), training)


def _small_inputs(cfg: Config, scale: int = 1) -> Config:
    """The config with its data preprocessor padding to the census batch
    size instead of the full crop (mmseg pads every batch to ``size``)."""
    preprocessor = cfg.model.get('data_preprocessor')
    if preprocessor and preprocessor.get('size'):
        preprocessor['size'] = batch_shape(cfg, scale)
    return cfg


def _drop_pretrained(init_cfg):
    """``init_cfg`` without its ``Pretrained`` entries (None if nothing is
    left)."""
    if isinstance(init_cfg, dict):
        return None if init_cfg.get('type') == 'Pretrained' else init_cfg
    if isinstance(init_cfg, (list, tuple)):
        kept = [c for c in init_cfg
                if not (isinstance(c, dict) and c.get('type') == 'Pretrained')]
        return kept or None
    return init_cfg


def init_without_pretrained(model: nn.Module) -> None:
    """``model.init_weights()`` as the Runner calls it, with every module's
    ``Pretrained`` ``init_cfg`` left out: nothing is downloaded and no
    checkpoint is needed, the other initialisers (the heads' normal, constant
    and bias-prior ones) run as in training."""
    for module in model.modules():
        if getattr(module, 'init_cfg', None) is not None:
            module.init_cfg = _drop_pretrained(module.init_cfg)
    if not hasattr(model, 'init_weights'):
        return
    # init_weights logs every parameter at INFO: not the census's output.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def _left_plain(skipped: Dict[str, str]) -> Dict[str, str]:
    """Non-pointwise convs of every kind left plain, with the reason."""
    return {name: reason for name, reason in skipped.items()
            if not reason.startswith('pointwise')
            and reason != 'already DO-Conv'}


def _other_convs(model: nn.Module) -> Dict[str, str]:
    """Non-pointwise convs of a kind other than 2-D (transposed, 1-D, 3-D),
    with their kind, for the record: they convert like the 2-D ones."""
    kinds = {}
    for name, module in model.named_modules():
        kind = conv_kind(module)
        if (isinstance(module, nn.modules.conv._ConvNd)
                and kind != 'Conv2d' and math.prod(module.kernel_size) > 1):
            kinds[name] = kind or type(module).__name__
    return kinds


def _has_gradient(parameter: torch.Tensor) -> bool:
    return parameter.grad is not None and bool(parameter.grad.abs().max() > 0)


def _randomize_d(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DOConvLayer):
                module.D.add_(0.05 * torch.randn(module.D.shape,
                                                 generator=generator))


def _outputs(graph: TensorGraph, inputs: torch.Tensor) -> List[torch.Tensor]:
    with torch.no_grad():
        return list(graph(inputs))


def census_of(config_path: str, seed: int = 0, **switch) -> CensusRow:
    """Run the census on one config; errors are caught into the row.

    A model that fails on the small batch is tried once more at twice the
    size (DDOD's deformable convs need P7 at least 3x3); the row keeps the
    size it ran at, or the first error if both fail.
    """
    start = time.perf_counter()
    first = _attempt(config_path, seed, switch, scale=1)
    row = first
    if first.error:
        second = _attempt(config_path, seed, switch, scale=2)
        row = first if second.error else second
    row.seconds = time.perf_counter() - start
    return row


def _attempt(config_path: str, seed: int, switch: dict,
             scale: int) -> CensusRow:
    row = CensusRow(config=config_path)
    try:
        _census(row, config_path, seed, switch, scale)
    except Exception as error:  # noqa: BLE001 - reported in the table
        message = str(error).strip().splitlines()
        frame = traceback.extract_tb(error.__traceback__)[-1]
        where = f'{osp.basename(frame.filename)}:{frame.lineno}'
        row.error = (f'{type(error).__name__}: '
                     f'{message[0] if message else ""} ({where})')
    return row


def _census(row: CensusRow, config_path: str, seed: int, switch: dict,
            scale: int) -> None:
    from mmengine.model import revert_sync_batchnorm
    cfg = _small_inputs(Config.fromfile(config_path), scale)
    row.input_shape = batch_shape(cfg, scale)
    scope = import_scope(cfg)
    torch.manual_seed(seed)
    # What a Runner tells the model's schedules (TOOD, YOLOX read them).
    hub = MessageHub.get_current_instance()
    for key in ('epoch', 'iter'):
        hub.update_info(key, 0)
    hub.update_info('max_epochs', 1)
    hub.update_info('max_iters', 1)
    with DefaultScope.overwrite_default_scope(scope):
        # Building edits the config dict (mmseg moves `pretrained`): a fresh
        # copy for each build, completed as the Runner completes it.
        model = revert_sync_batchnorm(MODELS.build(runner_model_config(cfg)))
        plain = revert_sync_batchnorm(MODELS.build(runner_model_config(cfg)))
        # The Runner's initialisation, not PyTorch's defaults: heads rely on
        # it (Sparse R-CNN's box regression, left at nn.Linear's default,
        # turns its learned proposals into boxes of negative size).
        init_without_pretrained(model)
    row.model = type(model).__name__
    row.other_convs = _other_convs(model)
    report = convert_to_doconv(model, **switch)
    row.converted = len(report.converted)
    row.added_params = report.added_params
    row.left_plain = _left_plain(report.skipped)
    _randomize_d(model, seed)

    # 3. One training step.
    model.train()
    data = synthetic_batch(model, cfg, scope, training=True, seed=seed,
                           scale=scale)
    if scope == 'mmpose':  # the pipeline's crop, not the synthetic image
        row.input_shape = tuple(data['inputs'].shape[-2:])
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    row.loss = float(loss)
    loss.backward()
    trainable = [(name, module.D) for name, module in model.named_modules()
                 if isinstance(module, DOConvLayer) and module.D.requires_grad]
    row.trainable_d = len(trainable)
    for name, d in trainable:
        weight = model.get_submodule(name).weight
        if not _has_gradient(weight):
            # The loss of this one step does not reach the layer at all (e.g.
            # a pyramid level with no valid anchor in a small image): not a
            # DO-Conv matter, recorded.
            row.unreached.append(name)
        elif not bool(weight.detach().abs().max() > 0):
            # A zero-initialised W (mmcv's deformable convs zero their offset
            # conv): dL/dD contracts dL/dW' with W, so D's first gradient is
            # exactly 0 by the maths; it moves once W has.
            row.zero_weight.append(name)
        elif not _has_gradient(d):
            row.d_without_gradient.append(name)

    # 4. Fold, compare: the exported outputs (tensor mode, or the dense part
    # where that needs proposals) and the predictions, which run every head.
    model.eval()
    data = synthetic_batch(model, cfg, scope, training=False, seed=seed + 1,
                           scale=scale)
    compare, description = _comparison(model, data, seed)
    expected = compare(model)
    row.compared = description()
    if not expected:
        raise RuntimeError('the model returns no tensors to compare')
    fold_doconv(model)
    row.fold_max_diff = max_abs_difference(expected, compare(model))

    # 5. The plain model takes the folded weights strictly.
    plain.load_state_dict(model.state_dict(), strict=True)
    row.strict_load = True
    row.plain_max_diff = max_abs_difference(expected, compare(plain.eval()))


def _prediction_tensors(samples) -> List[torch.Tensor]:
    tensors = []
    for sample in samples:
        for key in ('pred_instances', 'pred_sem_seg', 'seg_logits',
                    'pred_score', 'pred_label', 'pred_fields'):
            if key in sample:
                value = sample.get(key)
                value = value.to_dict() if hasattr(value, 'to_dict') else value
                if isinstance(value, dict):  # mmpose predicts numpy arrays
                    value = {k: torch.from_numpy(v)
                             if isinstance(v, np.ndarray) else v
                             for k, v in value.items()}
                tensors += flatten_tensors(value)
    return [t.float() for t in tensors]


def _comparison(model: nn.Module, data: dict, seed: int):
    """A function of a model giving the tensors to compare, and its name.

    torch's RNG is reseeded before every forward it compares: some models
    draw in their inference forward (SegNeXt's LightHamHead draws its NMF
    bases), and two forwards of the same weights would otherwise differ.
    """
    inputs, samples = data['inputs'], data['data_samples']
    graph = TensorGraph(model, 'tensor')
    try:
        with torch.no_grad():
            graph(inputs)
        name = "mode='tensor'"
    except Exception:  # noqa: BLE001 - e.g. two-stage detectors need proposals
        graph = TensorGraph(model, 'dense')
        graph.heads = dense_heads(model, inputs)
        name = 'extract_feat' + ''.join(f' + {h}' for h in graph.heads)

    predict_error = []

    @torch.no_grad()
    def compare(candidate: nn.Module) -> List[torch.Tensor]:
        graph.model = candidate
        torch.manual_seed(seed)
        outputs = list(graph(inputs))
        if not predict_error:
            try:
                torch.manual_seed(seed)
                predictions = candidate(inputs, copy.deepcopy(samples),
                                        mode='predict')
                outputs += _prediction_tensors(predictions)
            except Exception as error:  # noqa: BLE001 - upstream, recorded
                frame = traceback.extract_tb(error.__traceback__)[-1]
                predict_error.append(
                    f'{type(error).__name__} at '
                    f'{osp.basename(frame.filename)}:{frame.lineno}')
        return outputs

    def description() -> str:
        if predict_error:
            return f'{name} (predict fails upstream: {predict_error[0]})'
        return f'{name}, predict'

    return compare, description


def _cell(value: float) -> str:
    return f'{value:.2g}' if math.isfinite(value) else '-'


def short_name(path: str) -> str:
    """``scope::relative/path.py`` for a zoo config, the path otherwise."""
    for scope, package in (('mmdet', 'mmdet'), ('mmseg', 'mmseg'),
                           ('mmpretrain', 'mmpretrain'),
                           ('mmpose', 'mmpose')):
        marker = osp.join(package, '.mim', 'configs') + osp.sep
        if marker in path:
            return f'{scope}::{path.split(marker, 1)[1]}'
    return osp.relpath(path)


def markdown_table(rows: Sequence[CensusRow]) -> str:
    """The census as a markdown table with a summary line."""
    lines = [
        '| config | model | input | converted (added parameters) | '
        'non-pointwise left plain | loss | '
        'D with gradient | compared | fold max diff | plain strict load '
        '(max diff) | result |',
        '|---|---|---|---|---|---|---|---|---|---|---|'
    ]
    for row in rows:
        name = short_name(row.config)
        left = '; '.join(f'{k}: {v}' for k, v in row.left_plain.items()) \
            or '0'
        converted = f'{row.converted} (+{row.added_params:,})'
        if row.other_convs:
            kinds: Dict[str, int] = {}
            for kind in row.other_convs.values():
                kinds[kind] = kinds.get(kind, 0) + 1
            converted += '; other kinds in the model: ' + ', '.join(
                f'{count} {kind}' for kind, count in sorted(kinds.items()))
        with_gradient = row.trainable_d - len(row.d_without_gradient) \
            - len(row.unreached) - len(row.zero_weight)
        strict = (f'yes ({_cell(row.plain_max_diff)})' if row.strict_load
                  else 'no')
        result = 'ok' if row.ok else '; '.join(row.problems)
        size = 'x'.join(map(str, row.input_shape)) or '-'
        lines.append(
            f'| {name} | {row.model} | {size} | {converted} | {left} | '
            f'{_cell(row.loss)} | {with_gradient}/{row.trainable_d}'
            + (f' ({len(row.unreached)} not reached by this step\'s loss)'
               if row.unreached else '')
            + (f' ({len(row.zero_weight)} with zero-initialised W)'
               if row.zero_weight else '') + ' | '
            f'{row.compared} | {_cell(row.fold_max_diff)} | {strict} | '
            f'{result} |')
    passed = sum(row.ok for row in rows)
    lines.append('')
    lines.append(f'{passed} of {len(rows)} configs convert every non-pointwise '
                 'conv, train a step and fold exactly.')
    return '\n'.join(lines) + '\n\n' + scope_summary(rows)


def scope_summary(rows: Sequence[CensusRow]) -> str:
    """One markdown row per OpenMMLab scope: configs, those that pass,
    convs converted (those of other kinds than 2-D among them) and the
    parameters D adds."""
    scopes: Dict[str, List[CensusRow]] = {}
    for row in rows:
        name = short_name(row.config)
        scopes.setdefault(name.split('::')[0] if '::' in name else 'local',
                          []).append(row)
    lines = ['| zoo | configs | convert every conv, train a step, fold '
             'exactly | convs converted | of them 1-D, 3-D or transposed | '
             'parameters D adds |', '|---|---|---|---|---|---|']
    for scope, members in scopes.items():
        other = sum(len([name for name in row.other_convs
                         if name not in row.left_plain]) for row in members)
        lines.append(
            f'| {scope} | {len(members)} | '
            f'{sum(row.ok for row in members)} | '
            f'{sum(row.converted for row in members):,} | {other} | '
            f'{sum(row.added_params for row in members):,} |')
    return '\n'.join(lines)


def as_json(rows: Sequence[CensusRow]) -> List[dict]:
    """JSON-ready rows (``ok`` included)."""
    return [dict(asdict(row), ok=row.ok, problems=row.problems)
            for row in rows]


__all__ = ['CensusRow', 'resolve_configs', 'census_of', 'markdown_table',
           'scope_summary',
           'as_json', 'short_name', 'synthetic_batch']
