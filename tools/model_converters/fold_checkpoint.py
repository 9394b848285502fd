"""Fold a DO-Conv checkpoint and write a plain config that loads it.

    python tools/model_converters/fold_checkpoint.py CONFIG CHECKPOINT OUT_DIR

writes OUT_DIR/<checkpoint>_folded.pth (no D, no optimizer state) and
OUT_DIR/<config>_plain.py (conv_cfg DOConv -> plain conv, no mmdoconv import
or hook).  Stock mmdet / mmseg / mmpretrain load the pair with strict=True.
"""
import argparse
import os.path as osp

from mmdoconv.deploy import fold_checkpoint
from mmdoconv.utils.cli import (DictAction, cli_main, load_config,
                                require_file, require_folder_path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='the DO-Conv config')
    parser.add_argument('checkpoint', help='the DO-Conv checkpoint')
    parser.add_argument('out_dir', help='folder for the folded pair')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace existing output files')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value pairs')
    return parser.parse_args()


@cli_main
def main() -> None:
    args = parse_args()
    require_file(args.checkpoint, 'checkpoint')
    require_folder_path(args.out_dir, 'OUT_DIR')
    cfg = load_config(args.config, args.cfg_options)
    name = osp.splitext(osp.basename(args.config))[0]
    checkpoint, config = fold_checkpoint(cfg, args.checkpoint, args.out_dir,
                                         name, overwrite=args.overwrite)
    print(f'folded checkpoint: {checkpoint}\nplain config:      {config}')


if __name__ == '__main__':
    main()
