"""Write small deterministic datasets in the real COCO, Cityscapes, VOC aug,
ImageNet and CIFAR layouts (images of coloured shapes), for tests, the demo
and a laptop.

    python tools/misc/make_synthetic_data.py coco cityscapes voc imagenet cifar10 cifar100 --data-dir data

Default places: data/coco, data/cityscapes, data/VOCdevkit/VOC2012,
data/imagenet, data/cifar10, data/cifar100, i.e. where the upstream configs
look.  Point a config at
another folder with --cfg-options, e.g.
train_dataloader.dataset.data_root=/tmp/data/coco/
"""
import argparse
import os.path as osp
import sys

from mmdoconv.utils.cli import cli_main

# The workshop (synthetic data, recipes, pictures) lives beside tools/ in a
# checkout of the repository, not in the installed plugin.
sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
from workshop.synthetic import (DEFAULT_ROOTS, WRITERS,  # noqa: E402
                                claim_root, write_datasets)


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n'.join(__doc__.splitlines()[2:]))
    parser.add_argument('datasets', nargs='+', choices=sorted(WRITERS),
                        help='which datasets to write')
    parser.add_argument('--data-dir', default='data',
                        help='parent folder (default: data)')
    parser.add_argument(
        '--force', action='store_true',
        help='rewrite a dataset folder this tool wrote before (a folder '
        'without its marker, e.g. real data, is never touched)')
    args = parser.parse_args()
    names = []
    for name in args.datasets:
        root = osp.join(args.data_dir,
                        osp.relpath(DEFAULT_ROOTS[name], 'data'))
        if osp.exists(root) and not args.force:
            print(f'{name}: {root} exists, skipped (--force rewrites it)')
        else:
            names.append(name)
    for name in names:  # every folder is checked before anything is written
        root = osp.join(args.data_dir, osp.relpath(DEFAULT_ROOTS[name], 'data'))
        if osp.exists(root):
            claim_root(root)
    write_datasets(names, args.data_dir)


if __name__ == '__main__':
    main()
