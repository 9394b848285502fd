"""Plot training curves of mmengine work dirs in one PNG (paper Figure 5).

    python tools/analysis_tools/plot_curves.py WORK_DIR [WORK_DIR ...] OUT.png [--key loss]
"""
import argparse
import os.path as osp
import sys

from mmdoconv.utils.cli import cli_main

# The workshop (synthetic data, recipes, pictures) lives beside tools/ in a
# checkout of the repository, not in the installed plugin.
sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
from workshop.plotting import plot_curves  # noqa: E402


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dirs', nargs='+', help='mmengine work dirs')
    parser.add_argument('out', help='output PNG')
    parser.add_argument('--key', default='loss', help='logged scalar')
    parser.add_argument('--labels', nargs='+', help='one label per work dir')
    parser.add_argument('--title', help='figure title')
    args = parser.parse_args()
    if not args.out.endswith('.png'):
        parser.error(f'OUT must be a .png file, but got {args.out!r}')
    if args.labels and len(args.labels) != len(args.work_dirs):
        parser.error(f'{len(args.labels)} labels for {len(args.work_dirs)} '
                     'work dirs')
    print(plot_curves(args.work_dirs, args.out, args.labels, args.key,
                      args.title))


if __name__ == '__main__':
    main()
