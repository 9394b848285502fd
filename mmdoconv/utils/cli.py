"""Helpers shared by the command-line tools in ``tools/``: config loading,
one-line errors for bad input, and the checks made before any work starts.

The tools work for mmdet, mmseg and mmpretrain configs alike: the scope comes
from the config's ``default_scope`` and mmengine's registries import that
library's modules when the Runner first builds something.
"""
import copy
import functools
import glob
import importlib
import os.path as osp
import signal
import sys
from typing import Any, Callable, Dict, Mapping, Optional

from mmengine.config import Config
from mmengine.config import DictAction as _MMEngineDictAction
from torch import nn

from ..cnn.doconv import IncompatibleCheckpointError
from .checkpoint import (InvalidCheckpointError, UnsafeCheckpointError,
                         model_state_dict_of)

KNOWN_SCOPES = ('mmdet', 'mmseg', 'mmpretrain', 'mmpose')

__all__ = ['DictAction', 'load_config', 'import_scope', 'default_work_dir',
           'add_hook_once', 'prepare_run_config', 'require_file', 'build_model',
           'build_runner',
           'BadInputError', 'cli_main',
           'require_new_output', 'require_fresh_work_dir', 'require_folder_path',
           'parse_device',
           'require_training_checkpoint', 'model_state_dict_of',
           'check_checkpoint_matches_model']


class BadInputError(ValueError):
    """An argument, file or config a tool cannot work with."""


#: ``--cfg-options`` keys whose value is a formula string, taken verbatim
#: (mmengine's DictAction would read ``(M+2)*(N+2)`` as a tuple).
_VERBATIM_KEYS = ('D_mul', )


class DictAction(_MMEngineDictAction):
    """mmengine's ``--cfg-options`` action, with one clear error for an
    entry that is not ``KEY=VALUE`` and the paper's ``D_mul`` spellings
    (``'(M+2)*(N+2)'``) kept as the strings they are."""

    def __call__(self, parser, namespace, values, option_string=None):
        for entry in values or ():
            if '=' not in entry or entry.startswith('='):
                raise BadInputError(
                    f'{option_string} entries must be KEY=VALUE, but got '
                    f'{entry!r}')
        super().__call__(parser, namespace, values, option_string)
        options = getattr(namespace, self.dest)
        for entry in values or ():
            key, value = entry.split('=', maxsplit=1)
            if key.rsplit('.', 1)[-1] in _VERBATIM_KEYS and \
                    not value.strip().isdigit():
                options[key] = value.strip().strip('\'"')


#: Errors that mean "bad input": a command-line tool prints them as one line.
BAD_INPUT_ERRORS = (BadInputError, FileNotFoundError, FileExistsError,
                    UnsafeCheckpointError, InvalidCheckpointError,
                    IncompatibleCheckpointError)


def cli_main(main: Callable[[], Any]) -> Callable[[], None]:
    """Run a tool's ``main``: bad input is one ``error:`` line and exit 2.

    SIGTERM becomes SystemExit, so ``subprocess.run`` calls inside ``main``
    kill their children on the way out instead of leaving them running.
    """

    @functools.wraps(main)
    def wrapper() -> None:
        signal.signal(signal.SIGTERM,
                      lambda signum, frame: sys.exit(128 + signum))
        try:
            main()
        except BAD_INPUT_ERRORS as error:
            message = ' '.join(str(error).split())
            print(f'error: {message}', file=sys.stderr)
            sys.exit(2)

    return wrapper


def require_folder_path(path: str, what: str) -> None:
    """Refuse a folder to create or write into that cannot be one.

    Raises:
        BadInputError: If ``path``, or the nearest part of it that exists,
            is not a folder (a regular file on the way).
    """
    existing = osp.abspath(path)
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        raise BadInputError(f'{what} {path!r} cannot be a folder: '
                            f'{existing!r} is a file')


def parse_device(text: str, interpreter_for: Optional[str] = None):
    """``--device`` as a ``torch.device`` that is usable here.

    Args:
        text: The argument (``cpu``, ``cuda``, ``cuda:1`` ...).
        interpreter_for: What needs Triton's interpreter on a CPU (e.g.
            ``'--backend triton'``), or None.

    Raises:
        BadInputError: For a name torch does not know, CUDA without a CUDA
            device, or a CPU run of Triton kernels without
            ``TRITON_INTERPRET=1``.
    """
    import os

    import torch
    try:
        device = torch.device(text)
    except RuntimeError:
        raise BadInputError(f'--device must be a torch device such as cpu '
                            f'or cuda, but got {text!r}') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise BadInputError('--device cuda, but torch sees no CUDA device')
    if interpreter_for and device.type == 'cpu' and \
            os.environ.get('TRITON_INTERPRET') != '1':
        raise BadInputError(f'{interpreter_for} on cpu needs '
                            "TRITON_INTERPRET=1 (Triton's interpreter)")
    return device


def require_file(path: Optional[str], what: str) -> None:
    """Raise FileNotFoundError naming ``what`` unless ``path`` is a file."""
    if path is not None and not osp.isfile(path):
        raise FileNotFoundError(f'{what} {path!r} does not exist')


def require_new_output(path: str, overwrite: bool, flag: str = '--overwrite'
                       ) -> None:
    """Refuse to replace an existing output file unless told to.

    Raises:
        FileExistsError: If ``path`` exists and ``overwrite`` is False.
    """
    if osp.exists(path) and not overwrite:
        raise FileExistsError(f'{path!r} exists; pass {flag} to replace it')


def require_fresh_work_dir(work_dir: str, resume: bool,
                           overwrite: bool) -> None:
    """Refuse to start a new run over a work dir that holds one.

    Raises:
        FileExistsError: If ``work_dir`` holds checkpoints and the run
            neither resumes nor was told to overwrite.
    """
    if resume or overwrite or not osp.isdir(work_dir):
        return
    held = sorted(osp.basename(p) for p in glob.glob(
        osp.join(work_dir, '*.pth')))
    if osp.isfile(osp.join(work_dir, 'last_checkpoint')):
        held.insert(0, 'last_checkpoint')
    if held:
        shown = ', '.join(held[:3]) + (', ...' if len(held) > 3 else '')
        raise FileExistsError(
            f'work dir {work_dir!r} already holds a run ({shown}); pass '
            '--resume to continue it, choose another --work-dir, or pass '
            '--overwrite to replace its checkpoints')


def require_training_checkpoint(checkpoint: Any, path: str) -> None:
    """Check that ``--resume`` was given a checkpoint a Runner can resume.

    Raises:
        BadInputError: For a folded / deploy checkpoint or bare weights.
    """
    model_state_dict_of(checkpoint, path)
    missing = [key for key in ('meta', 'message_hub', 'optimizer')
               if key not in checkpoint]
    if missing:
        folded = isinstance(checkpoint.get('meta'), Mapping) and \
            checkpoint['meta'].get('mmdoconv_folded')
        what = 'a folded deploy checkpoint' if folded else 'weights only'
        raise BadInputError(
            f'--resume {path!r}: this is {what} (no {", ".join(missing)}), '
            'not a training checkpoint; start from its weights with '
            f'--cfg-options load_from={path} instead')


def check_checkpoint_matches_model(model: nn.Module, checkpoint: Any,
                                   path: str, config: str) -> None:
    """Refuse a checkpoint that is not this model's, before anything runs.

    A DO-Conv model accepts checkpoints without ``D`` (D = I: plain and
    folded checkpoints); a plain model accepts unfolded DO-Conv checkpoints,
    whose layers load folded (W', :mod:`mmdoconv.engine.fold_on_load`).

    Raises:
        BadInputError: Naming what does not match.
    """
    state_dict = model_state_dict_of(checkpoint, path)
    keys = {key[len('module.'):] if key.startswith('module.') else key: value
            for key, value in state_dict.items()}
    expected = model.state_dict()
    optional = ('.D', '.kernel_hw')  # D = I when absent
    # D (and kernel_hw) of a layer that is a plain conv here: folded on load.
    folds = {k for k in keys if k.endswith(optional)
             and k.rsplit('.', 1)[0] + '.weight' in expected
             and k.rsplit('.', 1)[0] + '.D' not in expected}
    missing = [k for k in expected
               if k not in keys and not k.endswith(optional)]
    unexpected = [k for k in keys if k not in expected and k not in folds]
    mismatched = [
        f'{k} {tuple(keys[k].shape)} vs {tuple(v.shape)}'
        for k, v in expected.items() if k in keys
        and tuple(keys[k].shape) != tuple(v.shape)
        # a DO-Conv layer with D_mul > M*N loads plain weights (see
        # DOConv2d._load_from_state_dict); a folded one composes W'
        and not (k.endswith('.weight')
                 and (k[:-len('weight')] + 'D' in expected
                      or k[:-len('weight')] + 'D' in folds))
    ]
    if missing or unexpected or mismatched:
        parts = [f'{name} {items[:3]}{" ..." if len(items) > 3 else ""}'
                 f' ({len(items)})' for name, items in (
                     ('missing', missing), ('unexpected', unexpected),
                     ('shape mismatch', mismatched)) if items]
        raise BadInputError(
            f'{path!r} is not a checkpoint of the model {config!r} builds: '
            + '; '.join(parts))


def load_config(path: str,
                cfg_options: Optional[Dict[str, Any]] = None) -> Config:
    """Read a config file and apply ``--cfg-options`` overrides.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    try:
        cfg = Config.fromfile(path)
    except SyntaxError as error:
        raise BadInputError(
            f'config {path!r} is not valid Python: {error.msg} '
            f'({osp.basename(error.filename or path)}, line {error.lineno})'
        ) from None
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise BadInputError(
                f'--cfg-options {cfg_options} do not apply to {path!r}: '
                f'{error}') from None
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
        raise BadInputError(f"config default_scope must be one of "
                         f"{KNOWN_SCOPES}, but got {scope!r}")
    utils = importlib.import_module(f'{scope}.utils')
    utils.register_all_modules(init_default_scope=True)
    return scope


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` in the config's scope, converted as its
    ``runner_type='DOConvRunner'`` switch says (what the Runner would build).
    """
    from mmengine.registry import MODELS

    from ..engine.runner import apply_doconv_switch
    import_scope(cfg)
    model = MODELS.build(runner_model_config(cfg))
    apply_doconv_switch(model, cfg)
    return model


def runner_model_config(cfg: Config) -> dict:
    """``cfg.model`` as mmengine's Runner builds it: a copy, with the
    config's top-level ``data_preprocessor`` (mmpretrain's configs keep
    mean, std and ``num_classes`` there) as its default."""
    model_cfg = copy.deepcopy(cfg.model)
    if isinstance(model_cfg, dict) and cfg.get('data_preprocessor'):
        model_cfg.setdefault('data_preprocessor',
                             copy.deepcopy(cfg.data_preprocessor))
    return model_cfg


def build_runner(cfg: Config):
    """What mmdet's / mmseg's tools do: ``RUNNERS.build`` when the config
    names a ``runner_type`` (the DO-Conv switch is one), else
    ``Runner.from_cfg``."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    return RUNNERS.build(cfg) if 'runner_type' in cfg else \
        Runner.from_cfg(cfg)


def default_work_dir(config_path: str) -> str:
    """OpenMMLab's default: ``./work_dirs/<config name>``."""
    return osp.join('./work_dirs',
                    osp.splitext(osp.basename(config_path))[0])


def prepare_run_config(config_path: str, cfg_options: Optional[Dict],
                       launcher: str, work_dir: Optional[str]) -> Config:
    """What tools/train.py and tools/test.py do before building a Runner:
    read the config, register its scope, set launcher (gloo on a machine
    without GPUs) and work_dir (OpenMMLab's default when not given)."""
    from ..engine.dist import use_cpu_distributed
    cfg = load_config(config_path, cfg_options)
    import_scope(cfg)
    cfg.launcher = launcher
    use_cpu_distributed(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(config_path)
    return cfg


def add_hook_once(cfg: Config, hook: Dict[str, Any]) -> None:
    """Append ``hook`` to ``custom_hooks`` unless one of its type is there."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(h, dict) and h.get('type') == hook['type']
               for h in hooks):
        hooks.append(hook)
    cfg.custom_hooks = hooks
