"""Helpers shared by the command-line tools in ``tools/``.

The tools work for mmdet, mmseg and mmpretrain configs alike: the scope comes
from the config's ``default_scope`` and mmengine's registries import that
library's modules when the Runner first builds something.
"""
import importlib
import os.path as osp
from typing import Any, Dict, List, Optional

from mmengine.config import Config, DictAction

KNOWN_SCOPES = ('mmdet', 'mmseg', 'mmpretrain')

__all__ = ['DictAction', 'load_config', 'import_scope', 'default_work_dir',
           'add_hook_once', 'prepare_run_config', 'require_file',
           'cfg_options_args']


def require_file(path: Optional[str], what: str) -> None:
    """Raise FileNotFoundError naming ``what`` unless ``path`` is a file."""
    if path is not None and not osp.isfile(path):
        raise FileNotFoundError(f'{what} {path!r} does not exist')


def load_config(path: str,
                cfg_options: Optional[Dict[str, Any]] = None) -> Config:
    """Read a config file and apply ``--cfg-options`` overrides.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def import_scope(cfg: Config) -> str:
    """Import and register the OpenMMLab library named by ``default_scope``.

    Returns:
        The scope name.

    Raises:
        ValueError: If the config has no known ``default_scope``.
    """
    scope = cfg.get('default_scope')
    if scope not in KNOWN_SCOPES:
        raise ValueError(f"config default_scope must be one of "
                         f"{KNOWN_SCOPES}, but got {scope!r}")
    utils = importlib.import_module(f'{scope}.utils')
    utils.register_all_modules(init_default_scope=True)
    return scope


def default_work_dir(config_path: str) -> str:
    """OpenMMLab's default: ``./work_dirs/<config name>``."""
    return osp.join('./work_dirs',
                    osp.splitext(osp.basename(config_path))[0])


def prepare_run_config(config_path: str, cfg_options: Optional[Dict],
                       launcher: str, work_dir: Optional[str]) -> Config:
    """What tools/train.py and tools/test.py do before building a Runner:
    read the config, register its scope, set launcher (gloo on a machine
    without GPUs) and work_dir (OpenMMLab's default when not given)."""
    from .dist import use_cpu_distributed
    cfg = load_config(config_path, cfg_options)
    import_scope(cfg)
    cfg.launcher = launcher
    use_cpu_distributed(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(config_path)
    return cfg


def cfg_options_args(options: Dict[str, Any]) -> List[str]:
    """``--cfg-options key=value ...`` arguments that DictAction parses
    back into ``options`` (tuples and lists included)."""
    args = ['--cfg-options']
    for key, value in options.items():
        if isinstance(value, (tuple, list)):
            inner = ','.join(str(v) for v in value)
            value = f'({inner})' if isinstance(value, tuple) else f'[{inner}]'
        args.append(f'{key}={value}')
    return args


def add_hook_once(cfg: Config, hook: Dict[str, Any]) -> None:
    """Append ``hook`` to ``custom_hooks`` unless one of its type is there."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(h, dict) and h.get('type') == hook['type']
               for h in hooks):
        hooks.append(hook)
    cfg.custom_hooks = hooks
