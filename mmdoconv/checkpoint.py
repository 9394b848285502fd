"""Checkpoint loading that stays safe on torch >= 2.6, and deploy checkpoints.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``: only tensors,
containers and allowlisted types.  mmengine 0.10.7's own checkpoints also
hold a few mmengine and numpy objects (the message hub's ``HistoryBuffer``,
numpy arrays and scalars), so resuming fails with "Unsupported global".
Instead of turning ``weights_only`` off, which would run any code a crafted
file carries, :func:`allow_mmengine_checkpoints` allowlists exactly those
types, and :func:`register_safe_loader` makes mmengine's local-file loader
name the refused type in a clear error.
"""
import os
import os.path as osp
import pickle
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from mmengine.runner.checkpoint import CheckpointLoader

from .fold import fold_state_dict


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that loading it would have to execute."""


def _history_buffer_getattr(owner: Any, name: str) -> Any:
    """The one ``getattr`` that mmengine checkpoints need, and nothing more.

    ``HistoryBuffer.__getstate__`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'min')`` and so on.  Allowlisting the real
    ``getattr`` would let a crafted file reach any attribute of any allowed
    object; this stand-in answers only for HistoryBuffer's own methods.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if owner is HistoryBuffer and name in ('min', 'max', 'current', 'mean'):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({owner!r}, {name!r}) while loading a checkpoint: '
        'only HistoryBuffer statistics methods are allowed')


def _mmengine_checkpoint_globals() -> List[Any]:
    """The non-tensor globals that mmengine 0.10's checkpoints contain."""
    from mmengine.logging.history_buffer import HistoryBuffer
    numpy_core = getattr(np, '_core', None) or np.core
    globals_: List[Any] = [
        HistoryBuffer,
        (_history_buffer_getattr, '__builtin__.getattr'),  # pickle protocol 2
        (_history_buffer_getattr, 'builtins.getattr'),
        numpy_core.multiarray._reconstruct,
        numpy_core.multiarray.scalar,
        np.ndarray,
        np.dtype,
    ]
    # numpy >= 1.25 pickles dtypes as their classes (np.dtypes.Float64DType).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        globals_ += [
            getattr(dtypes, name) for name in dir(dtypes)
            if name.endswith('DType')
        ]
    return globals_


def allow_mmengine_checkpoints() -> None:
    """Allowlist the mmengine / numpy types of mmengine checkpoints.

    Safe to call more than once.  Nothing else is allowed: a checkpoint that
    needs any other global is still refused.
    """
    torch.serialization.add_safe_globals(_mmengine_checkpoint_globals())


def load_checkpoint_file(filename: str,
                         map_location: Union[str, torch.device,
                                             None] = 'cpu') -> Dict:
    """``torch.load`` with ``weights_only=True`` and a clear refusal.

    Args:
        filename: Path of the checkpoint.
        map_location: As for ``torch.load``. Defaults to ``'cpu'``.

    Returns:
        The loaded checkpoint.

    Raises:
        FileNotFoundError: If ``filename`` is not a file.
        UnsafeCheckpointError: If the file needs a type outside the allowlist
            (the file is not executed).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} can not be found')
    allow_mmengine_checkpoints()
    try:
        return torch.load(filename, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is long; keep the line that names the global.
        lines = [line.strip() for line in str(error).splitlines()]
        reason = next((line for line in lines if 'GLOBAL' in line
                       or 'refusing' in line), lines[-1])
        raise UnsafeCheckpointError(
            f'refusing to load checkpoint {filename!r}: it contains objects '
            'outside the allowlist of tensors and mmengine/numpy types, and '
            'unpickling them could run arbitrary code. If you trust the '
            'file, add its types with torch.serialization.add_safe_globals. '
            f'Reason: {reason}') from None


def register_safe_loader() -> None:
    """Make mmengine's loader of local files use :func:`load_checkpoint_file`.

    Registered through mmengine's own ``CheckpointLoader.register_scheme``,
    so ``load_from``, ``resume`` and ``load_checkpoint`` all get it.
    """
    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file,
                                     force=True)


def save_folded_checkpoint(checkpoint: Dict,
                           out_path: str,
                           meta: Optional[Dict] = None) -> Dict:
    """Write a deploy checkpoint: the folded state dict and meta, nothing else.

    Args:
        checkpoint: A loaded mmengine checkpoint (with ``state_dict``) or a
            bare state dict.
        out_path: File to write; its folder is created.
        meta: Extra meta entries.

    Returns:
        The dict that was written.
    """
    state_dict = checkpoint.get('state_dict', checkpoint)
    deploy = {
        'meta': dict(checkpoint.get('meta') or {}, mmdoconv_folded=True,
                     **(meta or {})),
        'state_dict': fold_state_dict(state_dict),
    }
    os.makedirs(osp.dirname(osp.abspath(out_path)), exist_ok=True)
    torch.save(deploy, out_path)
    return deploy
