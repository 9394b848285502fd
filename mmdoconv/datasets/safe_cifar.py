"""CIFAR-10 / CIFAR-100 from their python pickles, without trusting them.

mmpretrain's ``CIFAR10`` / ``CIFAR100`` read ``cifar-10-batches-py/`` and
``cifar-100-python/`` with ``pickle.loads``: a crafted data file runs code
as it loads.  :class:`SafeCIFAR10` and :class:`SafeCIFAR100` are the same
datasets (same folders, files, splits, classes and ``img`` / ``gt_label``
records) read by an unpickler that builds only what the format holds: dicts,
lists, strings, ints and plain numeric numpy arrays.  Every global a pickle
asks for is bound to a checked stand-in of
:mod:`mmdoconv.utils.safe_unpickle` (the numpy ones mmengine checkpoints
use); anything else is refused with :class:`UnsafeDataError` naming the file
and the global, before any of it is built.

The files were written by Python 2 (``encoding='latin1'`` turns their byte
strings into ``str``); files written by Python 3 hold ``bytes``.  Both are
read.  The md5 sums mmpretrain checks are those of the official archives;
these classes check the files' structure instead (keys, dtypes, shapes,
label ranges), so the synthetic sets of ``tools/misc/make_synthetic_data.py``
and the real data load the same way.  Nothing is downloaded.
"""
import io
import pickle
from typing import Any, Dict, List

import numpy as np
from mmengine.fileio import exists, get, join_path
from mmpretrain.datasets import CIFAR10, CIFAR100
from mmpretrain.registry import DATASETS

from ..utils.safe_unpickle import (_ArrayBuilder, _reconstruct_array,
                                   materialize, safe_globals)


class UnsafeDataError(pickle.UnpicklingError):
    """A data file asks for objects that unpickling would have to run."""


class _Latin1ArrayBuilder(_ArrayBuilder):
    """An array whose raw bytes a Python 2 pickle stored as a ``str``."""
    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5 and isinstance(
                state[4], str):
            state = state[:4] + (state[4].encode('latin1'), )
        super().__setstate__(state)


def _reconstruct_latin1(subtype: Any, shape: Any, typecode: Any) -> Any:
    if isinstance(typecode, str):
        typecode = typecode.encode('latin1')
    _reconstruct_array(subtype, shape, typecode)  # checks, or refuses
    return _Latin1ArrayBuilder()


def _stand_ins() -> Dict[str, Any]:
    table = {name: stand_in for stand_in, name in safe_globals()}
    for core in ('numpy.core', 'numpy._core'):
        table[f'{core}.multiarray._reconstruct'] = _reconstruct_latin1
    return table


def load_cifar_pickle(data: bytes, name: str) -> Dict[str, Any]:
    """Unpickle one CIFAR python file with nothing but checked stand-ins.

    Returns:
        The file's dict with ``str`` keys and label names.

    Raises:
        UnsafeDataError: If the file asks for any other global (nothing of
            it is built), or holds an array numpy-wise unsafe to build.
    """
    table = _stand_ins()

    class Unpickler(pickle.Unpickler):

        def find_class(self, module: str, attribute: str) -> Any:
            key = f'{module}.{attribute}'
            if key not in table:
                raise UnsafeDataError(
                    f'refusing to load {name!r}: it asks for {key}, which '
                    'a CIFAR file does not hold and unpickling could run')
            return table[key]

    try:
        entry = materialize(
            Unpickler(io.BytesIO(data), encoding='latin1').load())
    except UnsafeDataError:
        raise
    except pickle.UnpicklingError as error:
        raise UnsafeDataError(f'refusing to load {name!r}: {error}') from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RecursionError, MemoryError) as error:
        raise ValueError(f'{name!r} is not a CIFAR python file '
                         f'({type(error).__name__}: {error})') from None
    if not isinstance(entry, dict):
        raise ValueError(f'{name!r} is not a CIFAR python file: it holds '
                         f'{type(entry).__name__}, not a dict')
    return {_text(key): value for key, value in entry.items()}


def _text(value: Any) -> Any:
    return value.decode('latin1') if isinstance(value, bytes) else value


def _check_batch(entry: Dict[str, Any], label_key: str, num_classes: int,
                 name: str) -> None:
    data, labels = entry.get('data'), entry.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8
            and data.ndim == 2 and data.shape[1] == 3 * 32 * 32):
        raise ValueError(f'{name!r}: "data" must be a uint8 array of shape '
                         f'(N, 3072), but got {_describe(data)}')
    if not (isinstance(labels, list) and len(labels) == len(data) and all(
            type(label) is int and 0 <= label < num_classes
            for label in labels)):
        raise ValueError(f'{name!r}: "{label_key}" must be a list of '
                         f'{len(data)} ints in [0, {num_classes})')


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f'a {value.dtype} array of shape {value.shape}'
    return type(value).__name__


class _SafeCIFARMixin:
    """What :class:`SafeCIFAR10` and :class:`SafeCIFAR100` change: how the
    files are read and checked."""

    label_key = 'labels'
    num_classes = 10

    def _read(self, file_name: str) -> Dict[str, Any]:
        path = join_path(self.data_prefix['root'], self.base_folder,
                         file_name)
        if not exists(path):
            raise FileNotFoundError(
                f'{type(self).__name__}: {path!r} does not exist (the '
                f'{self.base_folder}/ layout; nothing is downloaded)')
        return load_cifar_pickle(get(path), path)

    def _check_integrity(self) -> bool:
        return all(
            exists(join_path(self.data_prefix['root'], self.base_folder,
                             name))
            for name, _ in self.train_list + self.test_list)

    def load_data_list(self) -> List[dict]:
        files = self.train_list if self.split == 'train' else self.test_list
        images, labels = [], []
        for file_name, _ in files:
            entry = self._read(file_name)
            _check_batch(entry, self.label_key, self.num_classes, file_name)
            images.append(entry['data'])
            labels.extend(entry[self.label_key])
        images = np.vstack(images).reshape(-1, 3, 32, 32).transpose(
            0, 2, 3, 1)
        if self.CLASSES is None:
            self._load_meta()
        return [dict(img=image, gt_label=int(label))
                for image, label in zip(images, labels)]

    def _load_meta(self) -> None:
        entry = self._read(self.meta['filename'])
        names = entry.get(self.meta['key'])
        if not (isinstance(names, list) and len(names) == self.num_classes):
            raise ValueError(f'{self.meta["filename"]!r}: '
                             f'"{self.meta["key"]}" must list '
                             f'{self.num_classes} class names')
        self._metainfo.setdefault('classes', [_text(n) for n in names])


@DATASETS.register_module()
class SafeCIFAR10(_SafeCIFARMixin, CIFAR10):
    """mmpretrain's CIFAR10, read without unpickling code (see the module)."""


@DATASETS.register_module()
class SafeCIFAR100(_SafeCIFARMixin, CIFAR100):
    """mmpretrain's CIFAR100 (fine labels), read without unpickling code."""

    label_key = 'fine_labels'
    num_classes = 100
