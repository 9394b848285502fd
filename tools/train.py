"""Train an mmdet / mmseg / mmpretrain model with mmengine's Runner.

Takes the flags of mmdet's tools/train.py.  Importing mmdoconv registers
DOConv, the fold hook and torch >= 2.6-safe checkpoint loading.
"""
import argparse
import os

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmdoconv  # noqa: F401
from mmdoconv.amp import enable_amp
from mmdoconv.tooling import DictAction, prepare_run_config, require_file


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training (bf16 on CPU)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='enable automatically scaling LR')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the latest checkpoint in the work_dir '
        'automatically, or from the given checkpoint')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the used config, key=value pairs')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main() -> None:
    args = parse_args()
    cfg = prepare_run_config(args.config, args.cfg_options, args.launcher,
                             args.work_dir)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in \
                cfg.auto_scale_lr:
            raise RuntimeError('Can not find "auto_scale_lr" or '
                               '"auto_scale_lr.base_batch_size" in your config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        require_file(args.resume, '--resume checkpoint')
        cfg.resume = True
        cfg.load_from = args.resume
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg \
        else RUNNERS.build(cfg)
    runner.train()


if __name__ == '__main__':
    main()
