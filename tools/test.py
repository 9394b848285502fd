"""Test (evaluate) an mmdet / mmseg / mmpretrain checkpoint.

Takes the flags of mmdet's tools/test.py, plus ``--deploy`` (the mmyolo
convention): fold every DO-Conv layer before the first test iteration, so the
metric is the deployed plain-conv model's.  Without ``--deploy`` the model is
tested as trained (D and W), whatever the config's DOConvFoldHook says;
mmdet's / mmseg's own tools/test.py follow the config (folded).
"""
import argparse
import os

from mmengine.evaluator import DumpResults
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner.checkpoint import CheckpointLoader

import mmdoconv  # noqa: F401
from mmdoconv.utils.cli import (BadInputError, DictAction, add_hook_once,
                                build_runner, check_checkpoint_matches_model,
                                cli_main, prepare_run_config, require_file)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save evaluation logs')
    parser.add_argument(
        '--out', type=str,
        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument(
        '--deploy', action='store_true',
        help='fold DO-Conv layers into plain convs before testing (without '
        'it: the model as trained, unfolded)')
    parser.add_argument('--show', action='store_true', help='show results')
    parser.add_argument(
        '--show-dir', help='directory where painted images will be saved')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the used config, key=value pairs')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true',
                        help='test time augmentation')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def set_test_folding(cfg, deploy: bool) -> None:
    """Make ``--deploy`` decide folding, whatever the config's hook says.

    Without it the model is tested as trained (D and W); with it every
    DO-Conv layer is folded first, as the deployed model runs.
    """
    if deploy:
        add_hook_once(cfg, dict(type='DOConvFoldHook'))
    for hook in cfg.get('custom_hooks') or []:
        if isinstance(hook, dict) and hook.get('type') == 'DOConvFoldHook':
            hook['fold_test'] = deploy


def trigger_visualization_hook(cfg, args) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError(
            'VisualizationHook must be included in default_hooks to use '
            '--show or --show-dir; see the mmdet/mmseg base runtime configs')
    hook = hooks['visualization']
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if cfg.default_scope == 'mmdet':
            hook['test_out_dir'] = args.show_dir
        else:
            cfg.visualizer['save_dir'] = args.show_dir


@cli_main
def main() -> None:
    args = parse_args()
    require_file(args.checkpoint, 'checkpoint')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise BadInputError(
            f'--out must be a .pkl or .pickle file, but got {args.out!r}')
    checkpoint = CheckpointLoader.load_checkpoint(args.checkpoint, 'cpu')
    cfg = prepare_run_config(args.config, args.cfg_options, args.launcher,
                             args.work_dir)
    cfg.load_from = args.checkpoint
    set_test_folding(cfg, args.deploy)
    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise BadInputError('--tta needs tta_model and tta_pipeline in '
                               'the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.model = dict(**cfg.tta_model, module=cfg.model)
    runner = build_runner(cfg)
    model = runner.model
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    check_checkpoint_matches_model(model, checkpoint, args.checkpoint,
                                   args.config)
    del checkpoint
    if args.out is not None:
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
