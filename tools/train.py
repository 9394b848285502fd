"""Train an mmdet / mmseg / mmpretrain model with mmengine's Runner.

Takes the flags of mmdet's tools/train.py.  Importing mmdoconv registers
DOConv, the fold hook and torch >= 2.6-safe checkpoint loading.
"""
import argparse
import os

from mmengine.runner.checkpoint import CheckpointLoader

import mmdoconv  # noqa: F401
from mmdoconv.engine.amp import enable_amp
from mmdoconv.utils.cli import (BadInputError, DictAction, build_runner,
                                cli_main, prepare_run_config, require_file,
                                require_fresh_work_dir,
                                require_training_checkpoint)


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
        '--overwrite', action='store_true',
        help='start a new run in a work dir that holds one, replacing its '
        'checkpoints (without it such a work dir is refused)')
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


@cli_main
def main() -> None:
    args = parse_args()
    if args.resume not in (None, 'auto'):
        require_file(args.resume, '--resume checkpoint')
        require_training_checkpoint(
            CheckpointLoader.load_checkpoint(args.resume, 'cpu'), args.resume)
    cfg = prepare_run_config(args.config, args.cfg_options, args.launcher,
                             args.work_dir)
    require_fresh_work_dir(cfg.work_dir, args.resume is not None
                           or bool(cfg.get('resume')), args.overwrite)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in \
                cfg.auto_scale_lr:
            raise BadInputError('--auto-scale-lr: the config has no '
                                '"auto_scale_lr.base_batch_size"')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
