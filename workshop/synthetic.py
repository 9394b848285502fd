"""Small deterministic datasets in the real COCO, Cityscapes, VOC and ImageNet layouts.

No dataset can be downloaded on the machines this project is built on, so
tests and the demo train on images of coloured shapes written in the exact
folder layouts and label conventions of the real datasets.  The upstream
configs' loaders run on them unchanged (only ``data_root`` differs), and
real data drops in the same way.  Every shape class has its own shape and
colour, so a model learns them in a few hundred iterations.
"""
import functools
import json
import os
import os.path as osp
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class ShapeClass:
    """One learnable object class: a shape, a colour and its dataset labels."""
    shape: str  # 'rectangle', 'ellipse' or 'triangle'
    color: Tuple[int, int, int]
    coco_id: int  # COCO category id (one of the 80)
    coco_name: str
    cityscapes_train_id: int  # one of the 19 train ids
    voc_id: int  # one of the 20 object classes (0 is background)


SHAPES: Tuple[ShapeClass, ...] = (
    ShapeClass('rectangle', (220, 40, 40), 3, 'car', 13, 7),
    ShapeClass('ellipse', (40, 200, 60), 1, 'person', 11, 15),
    ShapeClass('triangle', (50, 80, 230), 10, 'traffic light', 6, 5),
)
# COCO's 80 categories with their real (gapped) ids: the annotation file lists
# all of them, as the real one does, because mmdet maps label i to the i-th
# category id of the file.
COCO_CATEGORIES = tuple(zip(
    (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
     22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42,
     43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
     62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
     85, 86, 87, 88, 89, 90),
    ('person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train',
     'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign',
     'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
     'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
     'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
     'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard',
     'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup', 'fork',
     'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
     'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
     'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv',
     'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave',
     'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase',
     'scissors', 'teddy bear', 'hair drier', 'toothbrush')))
# Real ImageNet ids of the first classes (tench, goldfish, great white shark).
IMAGENET_WNIDS = ('n01440764', 'n01443537', 'n01484850')
CITYSCAPES_ROAD, CITYSCAPES_SKY, IGNORE_INDEX = 0, 10, 255


def _background(rng: np.random.Generator, height: int,
                width: int) -> np.ndarray:
    """A soft, noisy grey background so the task is not trivially flat."""
    base = rng.integers(90, 160)
    noise = rng.normal(0, 12, size=(height, width, 1))
    gradient = np.linspace(-20, 20, width)[None, :, None]
    image = base + noise + gradient
    return np.clip(np.repeat(image, 3, axis=2), 0, 255).astype(np.uint8)


def _draw(shape: str, box: Tuple[int, int, int, int], draw: ImageDraw.ImageDraw,
          fill) -> None:
    x0, y0, x1, y1 = box
    if shape == 'rectangle':
        draw.rectangle(box, fill=fill)
    elif shape == 'ellipse':
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def draw_scene(rng: np.random.Generator, height: int, width: int,
               max_objects: int = 3
               ) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw up to ``max_objects`` non-overlapping shapes on a background.

    Returns:
        The RGB image ``(H, W, 3)`` and a list of ``(class index, mask)``.
    """
    image = Image.fromarray(_background(rng, height, width))
    draw = ImageDraw.Draw(image)
    occupied = np.zeros((height, width), dtype=bool)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(10):
            size = int(rng.integers(min(height, width) // 5,
                                    min(height, width) // 2))
            aspect = rng.uniform(0.7, 1.4)
            w, h = size, max(8, int(size * aspect))
            x0 = int(rng.integers(0, max(1, width - w)))
            y0 = int(rng.integers(0, max(1, height - h)))
            box = (x0, y0, min(width - 1, x0 + w), min(height - 1, y0 + h))
            if not occupied[box[1]:box[3] + 1, box[0]:box[2] + 1].any():
                break
        else:
            continue
        index = int(rng.integers(len(SHAPES)))
        shape = SHAPES[index]
        mask_image = Image.new('L', (width, height), 0)
        _draw(shape.shape, box, ImageDraw.Draw(mask_image), 255)
        mask = np.asarray(mask_image) > 0
        jitter = rng.integers(-25, 26, size=3)
        color = tuple(int(np.clip(c + j, 0, 255))
                      for c, j in zip(shape.color, jitter))
        _draw(shape.shape, box, draw, color)
        occupied |= mask
        objects.append((index, mask))
    return np.asarray(image), objects


def _boundary(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` of a mask's edge (VOC marks them 255)."""
    padded = np.pad(mask, width, mode='edge')
    grown = np.zeros_like(mask)
    shrunk = np.ones_like(mask)
    h, w = mask.shape
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            window = padded[width + dy:width + dy + h, width + dx:width + dx + w]
            grown |= window
            shrunk &= window
    return grown & ~shrunk


#: Written into every dataset root we create; a root without it is someone's
#: data, which no writer touches (not even with --force).
MARKER = '.mmdoconv-synthetic'


def claim_root(root: str) -> None:
    """Make ``root`` ours to write, or refuse if it holds other data.

    Raises:
        FileExistsError: If ``root`` is a non-empty folder without our marker
            (for example a real COCO download), or a file.
    """
    if osp.isfile(root):
        raise FileExistsError(f'dataset root {root!r} is a file')
    if osp.isdir(root) and os.listdir(root) and not osp.isfile(
            osp.join(root, MARKER)):
        raise FileExistsError(
            f'dataset folder {root!r} holds files that mmdoconv did not '
            f'write (no {MARKER} marker); refusing to write synthetic data '
            'into it. Choose another --data-dir.')
    os.makedirs(root, exist_ok=True)
    with open(osp.join(root, MARKER), 'w') as f:
        f.write('written by workshop/synthetic.py; safe to delete with the '
                'folder\n')


def _writes_root(writer: Callable[..., Dict[str, int]]):
    """Writers call :func:`claim_root` on their root before writing."""

    @functools.wraps(writer)
    def wrapper(root: str, *args, **kwargs) -> Dict[str, int]:
        claim_root(root)
        return writer(root, *args, **kwargs)

    return wrapper


def _save(array: np.ndarray, path: str, **kwargs) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


@_writes_root
def write_coco(root: str, num_train: int = 64, num_val: int = 16,
               size: Tuple[int, int] = (256, 320), seed: int = 0,
               progress: ProgressFn = print) -> Dict[str, int]:
    """COCO 2017 layout: ``{train,val}2017/*.jpg`` and
    ``annotations/instances_{train,val}2017.json``.

    The file lists COCO's 80 categories with their real ids (the shapes use
    three of them), so mmdet's 80-class configs and CocoMetric run unchanged.
    """
    height, width = size
    categories = [dict(id=cat_id, name=name, supercategory='object')
                  for cat_id, name in COCO_CATEGORIES]
    counts = {}
    for split, count, split_seed in (('train', num_train, seed),
                                     ('val', num_val, seed + 1)):
        rng = np.random.default_rng(split_seed)
        images, annotations = [], []
        for index in range(count):
            image, objects = draw_scene(rng, height, width)
            file_name = f'{index:012d}.jpg'
            _save(image, osp.join(root, f'{split}2017', file_name),
                  quality=95)
            image_id = index + 1
            images.append(dict(id=image_id, file_name=file_name,
                               height=height, width=width))
            for class_index, mask in objects:
                ys, xs = np.nonzero(mask)
                x0, y0 = int(xs.min()), int(ys.min())
                w, h = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id,
                    category_id=SHAPES[class_index].coco_id,
                    bbox=[x0, y0, w, h], area=int(mask.sum()), iscrowd=0,
                    segmentation=[[x0, y0, x0 + w, y0, x0 + w, y0 + h, x0,
                                   y0 + h]]))
        path = osp.join(root, 'annotations', f'instances_{split}2017.json')
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=categories), f)
        counts[split] = count
        progress(f'coco {split}: {count} images, {len(annotations)} boxes '
                 f'-> {root}')
    return counts


@_writes_root
def write_cityscapes(root: str, num_train: int = 32, num_val: int = 8,
                     size: Tuple[int, int] = (256, 512), seed: int = 0,
                     progress: ProgressFn = print) -> Dict[str, int]:
    """Cityscapes layout: ``leftImg8bit/{split}/<city>/*_leftImg8bit.png``
    and ``gtFine/{split}/<city>/*_gtFine_labelTrainIds.png`` (19 train ids,
    255 ignored: here a 2-pixel band along the horizon)."""
    height, width = size
    counts = {}
    for split, count, split_seed, city in (('train', num_train, seed,
                                            'synthville'),
                                           ('val', num_val, seed + 1,
                                            'shapeburg')):
        rng = np.random.default_rng(split_seed)
        for index in range(count):
            image, objects = draw_scene(rng, height, width)
            label = np.full((height, width), CITYSCAPES_ROAD, dtype=np.uint8)
            horizon = height // 2
            label[:horizon] = CITYSCAPES_SKY
            image = image.copy()
            image[:horizon] = np.clip(image[:horizon].astype(int) +
                                      [0, 20, 60], 0, 255).astype(np.uint8)
            label[horizon - 1:horizon + 1] = IGNORE_INDEX
            for class_index, mask in objects:
                label[mask] = SHAPES[class_index].cityscapes_train_id
                image[mask] = _recolor(image[mask], SHAPES[class_index])
            stem = f'{city}_{index:06d}_000019'
            _save(image, osp.join(root, 'leftImg8bit', split, city,
                                  f'{stem}_leftImg8bit.png'))
            _save(label, osp.join(root, 'gtFine', split, city,
                                  f'{stem}_gtFine_labelTrainIds.png'))
        counts[split] = count
        progress(f'cityscapes {split}: {count} images -> {root}')
    return counts


def _recolor(pixels: np.ndarray, shape: ShapeClass) -> np.ndarray:
    """Objects keep their class colour after the background is tinted."""
    return np.broadcast_to(np.array(shape.color, dtype=np.uint8),
                           pixels.shape).copy()


def _voc_palette() -> List[int]:
    """VOC's colour map (bit-interleaved), as in the official devkit."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


@_writes_root
def write_voc(root: str, num_train: int = 32, num_val: int = 8,
              num_aug: int = 16, size: Tuple[int, int] = (256, 320),
              seed: int = 0, progress: ProgressFn = print) -> Dict[str, int]:
    """PASCAL VOC 2012 + SBD-aug layout under ``root`` (= .../VOC2012):
    ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs),
    ``SegmentationClassAug/*.png`` (grey PNGs) and
    ``ImageSets/Segmentation/{train,val,aug}.txt``; 21 classes, 255 on object
    borders as in VOC."""
    height, width = size
    palette = _voc_palette()
    rng = np.random.default_rng(seed)
    lists: Dict[str, List[str]] = {'train': [], 'val': [], 'aug': []}
    total = num_train + num_val + num_aug
    for index in range(total):
        split = 'train' if index < num_train else (
            'val' if index < num_train + num_val else 'aug')
        image, objects = draw_scene(rng, height, width)
        label = np.zeros((height, width), dtype=np.uint8)
        for class_index, mask in objects:
            label[mask] = SHAPES[class_index].voc_id
        for _, mask in objects:
            label[_boundary(mask)] = IGNORE_INDEX
        stem = f'2012_{index:06d}'
        _save(image, osp.join(root, 'JPEGImages', f'{stem}.jpg'), quality=95)
        indexed = Image.fromarray(label, mode='P')
        indexed.putpalette(palette)
        if split != 'aug':
            os.makedirs(osp.join(root, 'SegmentationClass'), exist_ok=True)
            indexed.save(osp.join(root, 'SegmentationClass', f'{stem}.png'))
        _save(label, osp.join(root, 'SegmentationClassAug', f'{stem}.png'))
        lists[split].append(stem)
    # In VOC aug, aug.txt is the SBD train set (train images included).
    lists['aug'] = lists['train'] + lists['aug']
    os.makedirs(osp.join(root, 'ImageSets', 'Segmentation'), exist_ok=True)
    for split, stems in lists.items():
        with open(osp.join(root, 'ImageSets', 'Segmentation', f'{split}.txt'),
                  'w') as f:
            f.write('\n'.join(stems) + '\n')
    counts = {split: len(stems) for split, stems in lists.items()}
    progress(f'voc: {counts} -> {root}')
    return counts


@_writes_root
def write_imagenet(root: str, num_train: int = 32, num_val: int = 12,
                   size: int = 64, seed: int = 0,
                   progress: ProgressFn = print) -> Dict[str, int]:
    """ImageNet layout for mmpretrain: ``{train,val}/<wnid>/*.JPEG`` and
    ``meta/{train,val}.txt`` (``<wnid>/<file> <label>``) with real wnids and
    label indices of the 1000-class list; one shape class per wnid."""
    counts = {}
    for split, count, split_seed in (('train', num_train, seed),
                                     ('val', num_val, seed + 1)):
        rng = np.random.default_rng(split_seed)
        lines = []
        for index in range(count):
            label = index % len(IMAGENET_WNIDS)
            canvas = Image.fromarray(_background(rng, size, size))
            margin = int(rng.integers(size // 8, size // 4))
            _draw(SHAPES[label].shape, (margin, margin, size - margin,
                                        size - margin),
                  ImageDraw.Draw(canvas), SHAPES[label].color)
            wnid = IMAGENET_WNIDS[label]
            file_name = f'{wnid}/{wnid}_{split}_{index:05d}.JPEG'
            _save(np.asarray(canvas), osp.join(root, split, file_name),
                  format='JPEG', quality=95)
            lines.append(f'{file_name} {label}')
        os.makedirs(osp.join(root, 'meta'), exist_ok=True)
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        counts[split] = count
        progress(f'imagenet {split}: {count} images -> {root}')
    return counts


def _cifar_images(labels: Sequence[int], num_classes: int,
                  rng: np.random.Generator) -> np.ndarray:
    """32x32 images, one shape and colour per class, as CIFAR's ``data``:
    uint8 ``(N, 3072)``, each row the R, G, B planes in turn."""
    palette = np.random.default_rng(1234).integers(
        40, 230, size=(num_classes, 3))
    rows = []
    for label in labels:
        canvas = Image.fromarray(_background(rng, 32, 32))
        margin = int(rng.integers(4, 9))
        _draw(SHAPES[label % len(SHAPES)].shape,
              (margin, margin, 32 - margin, 32 - margin),
              ImageDraw.Draw(canvas), tuple(int(v) for v in palette[label]))
        rows.append(np.asarray(canvas).transpose(2, 0, 1).reshape(-1))
    return np.stack(rows).astype(np.uint8)


def _write_pickle(path: str, entry: dict) -> None:
    import pickle
    with open(path, 'wb') as f:
        pickle.dump(entry, f, protocol=4)


def _write_cifar(root: str, folder: str, num_classes: int,
                 files: Dict[str, int], label_key: str, meta_name: str,
                 meta: dict, seed: int, progress: ProgressFn) -> Dict[str, int]:
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, folder), exist_ok=True)
    counts = {}
    for index, (name, count) in enumerate(files.items()):
        labels = [int((index * 7 + i) % num_classes) for i in range(count)]
        entry = {'batch_label': f'synthetic {name}', label_key: labels,
                 'data': _cifar_images(labels, num_classes, rng),
                 'filenames': [f'{name}_{i:05d}.png' for i in range(count)]}
        if label_key == 'fine_labels':
            entry['coarse_labels'] = [label // 5 for label in labels]
        _write_pickle(osp.join(root, folder, name), entry)
        counts[name] = count
    _write_pickle(osp.join(root, folder, meta_name), meta)
    progress(f'{folder}: {counts} -> {root}')
    return counts


@_writes_root
def write_cifar10(root: str, num_per_batch: int = 20, num_test: int = 20,
                  seed: int = 0,
                  progress: ProgressFn = print) -> Dict[str, int]:
    """mmpretrain's CIFAR-10 layout, ``cifar-10-batches-py/``: five
    ``data_batch_<i>`` files and ``test_batch`` (python pickles of ``data``
    uint8 (N, 3072) and ``labels``) and ``batches.meta``, 10 classes."""
    files = {f'data_batch_{i}': num_per_batch for i in range(1, 6)}
    files['test_batch'] = num_test
    return _write_cifar(
        root, 'cifar-10-batches-py', 10, files, 'labels', 'batches.meta',
        {'label_names': list(CIFAR10_CLASSES), 'num_cases_per_batch':
         num_per_batch, 'num_vis': 3072}, seed, progress)


@_writes_root
def write_cifar100(root: str, num_train: int = 200, num_test: int = 100,
                   seed: int = 0,
                   progress: ProgressFn = print) -> Dict[str, int]:
    """mmpretrain's CIFAR-100 layout, ``cifar-100-python/``: ``train`` and
    ``test`` (``data``, ``fine_labels``, ``coarse_labels``) and ``meta``,
    100 classes."""
    return _write_cifar(
        root, 'cifar-100-python', 100, {'train': num_train, 'test': num_test},
        'fine_labels', 'meta',
        {'fine_label_names': [f'class_{i:02d}' for i in range(100)],
         'coarse_label_names': [f'superclass_{i:02d}' for i in range(20)]},
        seed, progress)


CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')
WRITERS: Dict[str, Callable[..., Dict[str, int]]] = {
    'coco': write_coco,
    'cityscapes': write_cityscapes,
    'voc': write_voc,
    'imagenet': write_imagenet,
    'cifar10': write_cifar10,
    'cifar100': write_cifar100,
}
DEFAULT_ROOTS = {
    'coco': 'data/coco',
    'cityscapes': 'data/cityscapes',
    'voc': 'data/VOCdevkit/VOC2012',
    'imagenet': 'data/imagenet',
    'cifar10': 'data/cifar10',
    'cifar100': 'data/cifar100',
}


def write_datasets(names: Sequence[str], data_dir: str = 'data',
                   progress: ProgressFn = print, **kwargs) -> Dict[str, str]:
    """Write the named datasets under ``data_dir`` in their default places.

    Returns:
        ``{name: root}`` of what was written.
    """
    roots = {}
    for name in names:
        if name not in WRITERS:
            raise ValueError(f'unknown dataset {name!r}; choose from '
                             f'{sorted(WRITERS)}')
        root = osp.join(data_dir, osp.relpath(DEFAULT_ROOTS[name], 'data'))
        WRITERS[name](root, progress=progress, **kwargs.get(name, {}))
        roots[name] = root
    return roots
