"""Checkpoint loading that never runs code, for every scheme mmengine knows.

torch >= 2.6 unpickles with ``weights_only=True`` by default, but mmengine
0.10.7 reaches checkpoints through several paths, and not all of them are
guarded: ``http(s)://``, ``torchvision://``, ``open-mmlab://`` and ``mmcls://``
go through ``torch.hub.load_state_dict_from_url``, which passes
``weights_only=False`` (a crafted file in the hub cache runs its payload);
the local-file path is guarded but cannot resume mmengine's own checkpoints
(numpy and ``HistoryBuffer`` are "unsupported globals").

:func:`register_safe_loaders` re-registers every scheme of mmengine's
``CheckpointLoader`` (its own extension point) with a loader built on
:func:`load_checkpoint_stream`: ``weights_only=True`` with the stand-ins of
:mod:`mmdoconv.utils.safe_unpickle` allowlisted only for the duration of that one
load (``torch.serialization.safe_globals``), so a plain ``torch.load``
elsewhere in the process accepts exactly what it accepted before.  Classes
the user allowlisted with ``torch.serialization.add_safe_globals`` load here
too: the way in for a trusted checkpoint that holds one.
"""
import io
import os
import os.path as osp
import pickle
from typing import IO, Any, Callable, Dict, Mapping, Optional, Union
from urllib.parse import urlparse

import torch
from torch import Tensor
from mmengine.runner.checkpoint import CheckpointLoader

from ..deploy.fold import fold_state_dict
from .safe_unpickle import materialize, safe_globals

MapLocation = Union[str, torch.device, Callable, Dict, None]

#: Phrases of torch's weights-only unpickler (and of our stand-ins) that mean
#: "this file asks for something that could run code", as opposed to "this
#: file is not a checkpoint".
_REFUSAL_MARKERS = ('Unsupported global', 'Trying to call reduce',
                    'Can only build', 'Can only create new object',
                    'is blocked', 'refusing ', 'Can only append',
                    'Can only extend', 'Can only setitem')


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that loading it would have to execute."""


class InvalidCheckpointError(ValueError):
    """A file is not a readable PyTorch checkpoint (truncated, not one)."""


def _refusal_reason(error: BaseException) -> Optional[str]:
    """The line of a weights-only error that names what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if any(marker in line for marker in _REFUSAL_MARKERS):
            return line.split('WeightsUnpickler error: ')[-1]
    return None


def load_checkpoint_stream(source: Union[str, IO[bytes]],
                           name: str,
                           map_location: MapLocation = 'cpu') -> Any:
    """Unpickle a checkpoint with ``weights_only=True`` and a scoped allowlist.

    Args:
        source: A file path or a binary file object.
        name: What to call the checkpoint in errors (path or URL).
        map_location: As for ``torch.load``. Defaults to ``'cpu'``.

    Returns:
        The checkpoint, with mmengine's numpy and HistoryBuffer objects built
        by :func:`mmdoconv.utils.safe_unpickle.materialize`.

    Raises:
        UnsafeCheckpointError: If the file needs anything outside tensors,
            containers and the data mmengine writes (nothing of it runs).
        InvalidCheckpointError: If the file is not a readable checkpoint.
    """
    try:
        with torch.serialization.safe_globals(safe_globals()):
            checkpoint = torch.load(source, map_location=map_location,
                                    weights_only=True)
        return materialize(checkpoint)
    except pickle.UnpicklingError as error:
        reason = _refusal_reason(error)
        if reason is None:
            # torch's message opens with advice about weights_only, which
            # does not apply to a file that is not a checkpoint at all.
            detail = str(error).split('WeightsUnpickler error: ')[-1]
            detail = detail.strip().splitlines()[0] if detail.strip() else ''
            raise InvalidCheckpointError(
                f'{name!r} is not a readable PyTorch checkpoint (not a torch '
                f'zip archive or pickle: {detail})') from None
        raise UnsafeCheckpointError(
            f'refusing to load checkpoint {name!r}: it holds objects outside '
            'tensors, containers and the numpy/HistoryBuffer data mmengine '
            'writes, and unpickling them could run code. Reason: '
            f'{reason} (a class you trust, and a file you trust, load after '
            'torch.serialization.add_safe_globals([TheClass]))') from None
    except (RuntimeError, EOFError, ValueError, TypeError, KeyError,
            IndexError, AttributeError, OSError, RecursionError,
            MemoryError, OverflowError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        first_line = (str(error).splitlines() or [''])[0]
        raise InvalidCheckpointError(
            f'{name!r} is not a readable PyTorch checkpoint '
            f'({type(error).__name__}: {first_line})') from None


def load_checkpoint_file(filename: str,
                         map_location: MapLocation = 'cpu') -> Any:
    """Load a local checkpoint safely (see :func:`load_checkpoint_stream`).

    Raises:
        FileNotFoundError: If ``filename`` is not a file.
        UnsafeCheckpointError: If the file would have to run code.
        InvalidCheckpointError: If the file is not a readable checkpoint.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} can not be found')
    return load_checkpoint_stream(filename, filename, map_location)


def load_checkpoint_url(url: str,
                        map_location: MapLocation = 'cpu',
                        model_dir: Optional[str] = None,
                        progress: bool = False) -> Any:
    """Download ``url`` into torch's hub cache (once) and load it safely.

    The cache file is the one ``torch.hub.load_state_dict_from_url`` uses,
    so checkpoints already downloaded by mmengine or torchvision are reused.
    In a distributed run local rank 0 downloads first, as mmengine does.
    """
    from mmengine.dist import barrier, get_dist_info
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    file_name = osp.basename(urlparse(url).path)
    if not file_name:
        raise ValueError(f'checkpoint URL {url!r} names no file')
    cached_file = osp.join(model_dir, file_name)
    rank, world_size = get_dist_info()
    if rank == 0:
        _download_once(url, cached_file, progress)
    if world_size > 1:
        barrier()
        # Other ranks find rank 0's file unless the cache is not shared.
        _download_once(url, cached_file, progress)
    return load_checkpoint_stream(cached_file, f'{url} ({cached_file})',
                                  map_location)


def _download_once(url: str, cached_file: str, progress: bool) -> None:
    if not osp.isfile(cached_file):
        os.makedirs(osp.dirname(cached_file), exist_ok=True)
        torch.hub.download_url_to_file(url, cached_file, progress=progress)


def _load_torchvision(filename: str, map_location: MapLocation = None) -> Any:
    from mmengine.runner.checkpoint import get_torchvision_models
    name = filename.split('://', 1)[1]
    return load_checkpoint_url(_lookup(get_torchvision_models(), name,
                                       filename), map_location)


def _load_openmmlab(filename: str, map_location: MapLocation = None) -> Any:
    from mmengine.runner.checkpoint import (_get_mmengine_home,
                                            get_deprecated_model_names,
                                            get_external_models)
    name = filename.split('://', 1)[1]
    name = get_deprecated_model_names().get(name, name)
    url = _lookup(get_external_models(), name, filename)
    if url.startswith(('http://', 'https://')):
        return load_checkpoint_url(url, map_location)
    return load_checkpoint_file(osp.join(_get_mmengine_home(), url),
                                map_location)


def _load_mmcls(filename: str, map_location: MapLocation = None) -> Any:
    from mmengine.runner.checkpoint import (_process_mmcls_checkpoint,
                                            get_mmcls_models)
    url = _lookup(get_mmcls_models(), filename[len('mmcls://'):], filename)
    return _process_mmcls_checkpoint(load_checkpoint_url(url, map_location))


def _load_file_backend(filename: str, map_location: MapLocation = None,
                       backend: str = 'petrel') -> Any:
    from mmengine.fileio import get_file_backend
    file_backend = get_file_backend(
        filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return load_checkpoint_stream(buffer, filename, map_location)


def _load_pavi(filename: str, map_location: MapLocation = None) -> Any:
    from tempfile import TemporaryDirectory
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Please install pavi to load checkpoint from '
                          'modelcloud.') from None
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, model.name)
        model.download(downloaded)
        return load_checkpoint_stream(downloaded, filename, map_location)


def _lookup(table: Dict[str, str], name: str, filename: str) -> str:
    if name not in table:
        raise KeyError(f'{filename!r}: no checkpoint named {name!r} is known '
                       'to mmengine for this scheme')
    return table[name]


#: Every prefix mmengine 0.10's CheckpointLoader registers, and our loader.
SAFE_LOADERS: Dict[Any, Callable] = {
    '': load_checkpoint_file,
    ('http://', 'https://'): load_checkpoint_url,
    ('modelzoo://', 'torchvision://'): _load_torchvision,
    ('open-mmlab://', 'openmmlab://'): _load_openmmlab,
    'mmcls://': _load_mmcls,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): _load_file_backend,
    'pavi://': _load_pavi,
}


def register_safe_loaders() -> None:
    """Make every scheme of mmengine's ``CheckpointLoader`` load safely.

    Registered through ``CheckpointLoader.register_scheme(force=True)``, so
    ``load_from``, ``resume``, ``load_checkpoint`` and ``Pretrained``
    ``init_cfg`` all get it, in our tools and in mmdet's / mmseg's /
    mmpretrain's own.
    """
    for prefixes, loader in SAFE_LOADERS.items():
        CheckpointLoader.register_scheme(prefixes=prefixes, loader=loader,
                                         force=True)


def model_state_dict_of(checkpoint: Any, path: str) -> Mapping[str, Tensor]:
    """The model weights of a loaded checkpoint, or a clear error.

    Raises:
        InvalidCheckpointError: If the checkpoint holds no model state dict.
    """
    if isinstance(checkpoint, Mapping) and 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
    else:
        state_dict = checkpoint
    if not (isinstance(state_dict, Mapping) and state_dict and all(
            isinstance(k, str) and isinstance(v, Tensor)
            for k, v in state_dict.items())):
        keys = sorted(map(str, checkpoint))[:5] if isinstance(
            checkpoint, Mapping) else type(checkpoint).__name__
        raise InvalidCheckpointError(
            f'{path!r} is not a model checkpoint: expected a "state_dict" '
            f'of named tensors, but it holds {keys}')
    return state_dict


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
