"""Draw how D changed each kernel position of a trained DO-Conv model
(paper Figure 6: H_mn = sum_i |W'_imn - W_imn|, one normalised map per layer).

    python tools/analysis_tools/visualize_kernels.py CONFIG CHECKPOINT OUT.png [--prefix backbone.layer1]
"""
import argparse
import os.path as osp
import sys

from mmengine.runner import load_checkpoint

import mmdoconv  # noqa: F401
from mmdoconv.utils.cli import (DictAction, build_model, cli_main,
                                load_config)
from mmdoconv.utils.kernel_maps import kernel_change_maps

# The workshop (synthetic data, recipes, pictures) lives beside tools/ in a
# checkout of the repository, not in the installed plugin.
sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
from workshop.plotting import plot_kernel_maps  # noqa: E402


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='the DO-Conv config')
    parser.add_argument('checkpoint', help='a DO-Conv checkpoint (not folded)')
    parser.add_argument('out', help='output PNG')
    parser.add_argument('--prefix', default='backbone.layer1',
                        help='draw layers whose name starts with this')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    if not args.out.endswith('.png'):
        parser.error(f'OUT must be a .png file, but got {args.out!r}')
    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    maps = kernel_change_maps(model, args.prefix)
    if not maps:
        raise SystemExit(f'no DO-Conv layer named {args.prefix}*: is '
                         f'{args.checkpoint} a DO-Conv checkpoint?')
    if all(heat.max() == 0 for heat in maps.values()):
        raise SystemExit(f'D of every {args.prefix}* layer is still the '
                         'identity, so there is nothing to draw: was this '
                         'stage frozen (frozen_stages) or trained for less '
                         'than two steps (a zero-initialised residual BN '
                         'gives its branch no gradient in the first)?')
    print(plot_kernel_maps(maps, args.out,
                           title=f'{args.prefix}: H_mn = Σ|W\'−W| per layer'))


if __name__ == '__main__':
    main()
