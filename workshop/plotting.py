"""The paper's pictures: training curves (Fig. 5) and kernel maps (Fig. 6).

Both write PNGs with matplotlib's non-interactive Agg backend.
"""
import glob
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def find_scalars(work_dir: str) -> str:
    """The newest ``vis_data/scalars.json`` mmengine wrote under work_dir."""
    candidates = glob.glob(osp.join(work_dir, '*', 'vis_data',
                                    'scalars.json'))
    if not candidates:
        raise FileNotFoundError(
            f'no */vis_data/scalars.json under {work_dir!r}: is it an '
            'mmengine work dir of a training run with LocalVisBackend?')
    return max(candidates, key=osp.getmtime)


def read_train_scalars(work_dir: str, key: str = 'loss'
                       ) -> Tuple[List[int], List[float]]:
    """``(steps, values)`` of a logged training scalar."""
    steps, values = [], []
    with open(find_scalars(work_dir)) as f:
        for line in f:
            record = json.loads(line)
            if key in record and 'step' in record and 'lr' in record:
                steps.append(int(record['step']))
                values.append(float(record[key]))
    if not steps:
        raise ValueError(f'{work_dir!r} logged no training {key!r}')
    return steps, values


def plot_curves(work_dirs: Sequence[str], out: str,
                labels: Optional[Sequence[str]] = None, key: str = 'loss',
                title: Optional[str] = None) -> str:
    """Plot a training scalar of several runs in one figure (paper Fig. 5)."""
    plt = _pyplot()
    labels = labels or [osp.basename(osp.normpath(d)) for d in work_dirs]
    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for work_dir, label in zip(work_dirs, labels):
        steps, values = read_train_scalars(work_dir, key)
        axis.plot(steps, values, label=label, linewidth=1.5)
    axis.set_xlabel('iteration')
    axis.set_ylabel(f'training {key}')
    axis.set_title(title or f'training {key}')
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def plot_kernel_maps(maps: Dict[str, np.ndarray], out: str,
                     title: str = "How D changed each kernel position "
                     "(H_mn = Σ|W'−W|)") -> str:
    """A grid of per-layer heat maps, each normalised (paper Fig. 6)."""
    if not maps:
        raise ValueError('no DO-Conv layer with a 2-D kernel to draw')
    plt = _pyplot()
    columns = min(4, len(maps))
    rows = (len(maps) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns,
                                                        2.5 * rows + 0.5),
                                dpi=120, squeeze=False)
    for axis in axes.flat:
        axis.axis('off')
    for axis, (name, heat) in zip(axes.flat, maps.items()):
        span = heat.max() - heat.min()
        normalised = (heat - heat.min()) / span if span > 0 else heat * 0
        axis.imshow(normalised, cmap='magma', vmin=0, vmax=1)
        axis.set_title(name.replace('backbone.', ''), fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out
