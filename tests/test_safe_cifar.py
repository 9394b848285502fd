"""SafeCIFAR10 / SafeCIFAR100: mmpretrain's CIFAR layouts read without
running a crafted file's code (mmpretrain unpickles them with pickle.loads)."""
import os
import pickle

import numpy as np
import pytest

from mmdoconv.datasets import (SafeCIFAR10, SafeCIFAR100, UnsafeDataError,
                               load_cifar_pickle)
from workshop.synthetic import write_cifar10, write_cifar100


@pytest.fixture(scope='module')
def cifar_roots(tmp_path_factory):
    folder = tmp_path_factory.mktemp('cifar')
    quiet = dict(progress=lambda message: None)
    write_cifar10(str(folder / 'cifar10'), num_per_batch=4, num_test=6,
                  **quiet)
    write_cifar100(str(folder / 'cifar100'), num_train=8, num_test=4,
                   **quiet)
    return str(folder / 'cifar10'), str(folder / 'cifar100')


def test_synthetic_sets_load_as_mmpretrain_loads_them(cifar_roots):
    """The same records as mmpretrain's own (unsafe) classes read."""
    from mmpretrain.datasets import CIFAR10, CIFAR100
    for safe, theirs, root, sizes in (
            (SafeCIFAR10, CIFAR10, cifar_roots[0], (20, 6)),
            (SafeCIFAR100, CIFAR100, cifar_roots[1], (8, 4))):
        for split, size in zip(('train', 'test'), sizes):
            ours = safe(data_root=root, split=split, pipeline=[])
            # mmpretrain checks the official archives' md5 sums: skip that.
            reference = theirs.__new__(theirs)
            reference.__dict__.update(ours.__dict__)
            reference._check_integrity = lambda: True
            expected = CIFAR10.load_data_list(reference)
            assert len(ours) == size == len(expected)
            for a, b in zip(ours.data_list, expected):
                assert a['gt_label'] == b['gt_label']
                assert np.array_equal(a['img'], b['img'])
                assert a['img'].shape == (32, 32, 3)
        assert len(ours.CLASSES) == (10 if safe is SafeCIFAR10 else 100)


class _Payload:
    """Runs code when unpickled (what a crafted data file does)."""

    def __reduce__(self):
        return os.system, ('touch /tmp/mmdoconv_cifar_pwned',)


class _ObjectArray:
    """An object-dtype array: its raw bytes would be read as pointers."""

    def __reduce__(self):
        return np.array([1, 2], dtype=object).__reduce__()


@pytest.mark.parametrize('payload, phrase', [
    (_Payload(), 'it asks for posix.system'),
    (_ObjectArray(), 'numpy dtype'),
    (__import__('functools').partial(print, 1), 'functools.partial'),
])
def test_crafted_data_files_are_refused_before_anything_runs(
        cifar_roots, tmp_path, payload, phrase):
    entry = {'data': np.zeros((1, 3072), np.uint8), 'labels': [0],
             'extra': payload}
    with pytest.raises(UnsafeDataError, match=phrase):
        load_cifar_pickle(pickle.dumps(entry, protocol=4), 'crafted')
    # Through the dataset: a crafted batch file in a real layout.
    root = tmp_path / 'cifar10'
    import shutil
    shutil.copytree(cifar_roots[0], root)
    (root / 'cifar-10-batches-py' / 'data_batch_3').write_bytes(
        pickle.dumps(entry, protocol=2))
    with pytest.raises(UnsafeDataError, match='data_batch_3'):
        SafeCIFAR10(data_root=str(root), pipeline=[])
    assert not os.path.exists('/tmp/mmdoconv_cifar_pwned')


class _Python2Array:
    """A uint8 array pickled as Python 2's cPickle wrote the real files:
    raw data and type code as (latin1) ``str``."""

    def __init__(self, array):
        self.array = array

    def __reduce__(self):
        from numpy.core.multiarray import _reconstruct
        dtype = _Python2Dtype()
        return (_reconstruct, (np.ndarray, (0, ), 'b'),
                (1, self.array.shape, dtype, False,
                 self.array.tobytes().decode('latin1')))


class _Python2Dtype:

    def __reduce__(self):
        return (np.dtype, ('u1', 0, 1),
                (3, '|', None, None, None, -1, -1, 0))


def test_python2_pickles_of_the_real_files_load(tmp_path):
    data = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(
        2, 3072)
    blob = pickle.dumps({'data': _Python2Array(data), 'labels': [3, 4],
                         'batch_label': 'training batch 1 of 5'}, protocol=2)
    entry = load_cifar_pickle(blob, 'data_batch_1')
    assert np.array_equal(entry['data'], data) and entry['labels'] == [3, 4]


@pytest.mark.parametrize('entry, phrase', [
    ({'data': np.zeros((2, 100), np.uint8), 'labels': [0, 1]},
     r'\(N, 3072\)'),
    ({'data': np.zeros((2, 3072), np.uint8), 'labels': [0, 10]},
     r'ints in \[0, 10\)'),
    ([1, 2], 'not a dict'),
])
def test_malformed_files_are_named(cifar_roots, tmp_path, entry, phrase):
    import shutil
    root = tmp_path / 'cifar10'
    shutil.copytree(cifar_roots[0], root)
    (root / 'cifar-10-batches-py' / 'test_batch').write_bytes(
        pickle.dumps(entry, protocol=4))
    with pytest.raises(ValueError, match=phrase):
        SafeCIFAR10(data_root=str(root), split='test', pipeline=[])
