"""The end-to-end demo behind ``make demo`` (see tools/misc/demo.py).

Everything runs through the project's own configs and tools, each in its own
process (forked from one warm :class:`~workshop.tool_server.ToolServer`, so
the imports are paid once) so that mmengine's iteration log streams
underneath the phase lines.  Model
and input sizes are reduced through ``--cfg-options`` (printed at the start)
so the whole demo fits in about 10 minutes on a 2-core CPU.
"""
import os
import os.path as osp
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .recipes import detection_options, segmentation_options
from .tool_server import ToolServer

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Lines of the tools' output shown under the phase lines.
_SHOWN = re.compile(r'Epoch\((train|val|test)\)|Iter\((train|val|test)\)|'
                    r'^note: |folded \d+ DO-Conv|^ONNX nodes|max \|PyTorch')


@dataclass
class DemoModel:
    """One model pair of the demo and how to run it small."""
    key: str
    label: str
    scope: str
    metric: str
    baseline: str
    doconv: str
    reductions: str
    kernel_prefix: str
    export_shape: tuple
    options: Dict = field(default_factory=dict)


def detection(data_dir: str, quick: bool) -> DemoModel:
    root = osp.join(data_dir, 'coco') + '/'
    epochs = 1 if quick else 3
    # Two steps when quick: mmdet's ResNet zero-initialises each residual
    # branch's last BN, so the first step gives the branch convs (and D) no
    # gradient.
    options = detection_options(root, train_images=4 if quick else None,
                                val_images=2 if quick else None,
                                scale=(320, 256), epochs=epochs,
                                light_heads=True)
    options.update({
        'model.backbone.depth': 18,
        'model.neck.in_channels': [64, 128, 256, 512],
        'train_dataloader.batch_size': 2 if quick else 4,
        'train_cfg.val_interval': epochs,
        'param_scheduler.0.end': 20,
        # No step decay inside so short a run: warm up, then constant LR.
        'param_scheduler.1.milestones': [epochs + 1],
        'default_hooks.logger.interval': 4,
    })
    return DemoModel(
        key='faster_rcnn', label='Faster R-CNN', scope='mmdet',
        metric='coco/bbox_mAP',
        baseline='configs/faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
        doconv='configs/faster_rcnn/faster-rcnn_r50-doconv-task_fpn_1x_coco.py',
        reductions=(f'ResNet-18 instead of ResNet-50 (FPN inputs 64..512), '
                    'RoI head FC 256 wide, 64 RPN / 128 RoI samples, 300 '
                    f'proposals, images 320x256, batch '
                    f'{options["train_dataloader.batch_size"]}, '
                    f'{epochs} epochs of the synthetic COCO set from scratch '
                    '(no ImageNet weights here), warm-up 20 iterations then '
                    'constant LR, '
                    'all boxes kept at test time (score_thr 0)'),
        # mmdet's Faster R-CNN freezes the stem and layer1 (frozen_stages=1):
        # their D never trains, so draw the first trained stage.
        kernel_prefix='backbone.layer2', export_shape=(256, 320),
        options=options)


def segmentation(data_dir: str, quick: bool) -> DemoModel:
    root = osp.join(data_dir, 'cityscapes') + '/'
    iters = 2 if quick else 120
    options = segmentation_options('cityscapes', root, crop=(128, 256),
                                   iters=iters, scale=(512, 256),
                                   val_images=2 if quick else None)
    options.update({
        'model.backbone.depth': 18,
        'model.decode_head.in_channels': 512,
        'model.decode_head.channels': 128,
        'model.auxiliary_head.in_channels': 256,
        'model.auxiliary_head.channels': 64,
        'default_hooks.logger.interval': 10 if not quick else 1,
    })
    return DemoModel(
        key='deeplabv3', label='DeepLabv3', scope='mmseg', metric='mIoU',
        baseline='configs/deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-'
        '512x1024.py',
        doconv='configs/deeplabv3/deeplabv3_r50-d8-doconv-task_4xb2-80k_'
        'cityscapes-512x1024.py',
        reductions=(f'ResNetV1c-18-D8 instead of R50-D8 (ASPP 128 and FCN 64 '
                    f'channels), 256x512 images, 128x256 crops, batch 2, '
                    f'{iters} iterations on the synthetic Cityscapes set '
                    'from scratch'),
        kernel_prefix='backbone.layer1', export_shape=(256, 512),
        options=options)


class Progress:
    """One line per phase with the elapsed time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        elapsed = time.perf_counter() - self.start
        print(f'[demo {elapsed:6.1f}s] {message}', flush=True)


def run(args: List[str], log_path: str, server: ToolServer,
        echo: bool = True) -> str:
    """Run a tool in a child of ``server``, stream its output (indented) and
    keep it in log_path.  Stopping the demo (SIGTERM, Ctrl-C) kills the tool.
    """
    env = _tool_env()
    os.makedirs(osp.dirname(log_path), exist_ok=True)
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        fifo = osp.join(folder, 'output')
        os.mkfifo(fifo)
        server.start(args, cwd=ROOT, env=env, stdout=fifo, stderr=fifo)
        try:
            with open(fifo, errors='replace') as output, \
                    open(log_path, 'w') as log:
                for line in output:
                    log.write(line)
                    lines.append(line)
                    if echo and _SHOWN.search(line):
                        # mmengine's message without its date and logger
                        # prefix.
                        print('    ' + line.rstrip().split(' - INFO - ')[-1],
                              flush=True)
        except BaseException:  # stopped (SIGTERM, Ctrl-C): stop the tool too
            server.kill_child()
            raise
        returncode = server.wait()
    if returncode:
        tail = ''.join(lines[-40:])
        raise RuntimeError(f'{" ".join(args[:2])} failed (log: {log_path}):'
                           f'\n{tail}')
    return ''.join(lines)


def tool_server() -> ToolServer:
    """A :class:`ToolServer` for the demo's tools: their imports (8-10 s
    each on a 2-core machine) are paid once."""
    return ToolServer(cwd=ROOT, env=_tool_env())


def _tool_env() -> Dict[str, str]:
    """The environment the tools run with: the repository importable."""
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
                os.environ.get('PYTHONPATH', ''))


def metric_from_log(text: str, metric: str) -> Optional[float]:
    values = re.findall(rf'{re.escape(metric)}: (-?[\d.]+)', text)
    return float(values[-1]) if values else None


def train_step_seconds(work_dir: str) -> float:
    """Median logged iteration time of a training run."""
    from .plotting import read_train_scalars
    _, times = read_train_scalars(work_dir, 'time')
    return statistics.median(times[1:] or times)


def count_parameters(config: str, options: Dict, scope: str,
                     fold: bool) -> int:
    from mmengine.registry import DefaultScope

    from mmdoconv import fold_doconv
    from mmdoconv.utils.cli import build_model, load_config
    cfg = load_config(osp.join(ROOT, config), options)
    with DefaultScope.overwrite_default_scope(scope):
        model = build_model(cfg)
    if fold:
        fold_doconv(model)
    return sum(p.numel() for p in model.parameters())


def first_val_image(data_dir: str, key: str) -> str:
    if key == 'faster_rcnn':
        folder = osp.join(data_dir, 'coco', 'val2017')
    else:
        folder = osp.join(data_dir, 'cityscapes', 'leftImg8bit', 'val')
    files = sorted(
        osp.join(d, f) for d, _, names in os.walk(folder) for f in names)
    return files[0]
