"""No checkpoint from any scheme runs code, crashes the process or changes it.

The matrix: crafted payload kinds x every way a checkpoint is loaded (our API,
each scheme of mmengine's CheckpointLoader, mmengine's load_checkpoint, the
Runner's load_from and resume, a Pretrained init_cfg).  Remote schemes are
served by an HTTP server bound to 127.0.0.1 inside the test, or found in the
torch hub cache where torchvision:// / open-mmlab:// / mmcls:// look.
"""
import functools
import http.server
import os
import os.path as osp
import pickle
import threading
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import (CheckpointLoader, get_external_models,
                                        get_mmcls_models,
                                        get_torchvision_models,
                                        load_checkpoint)
from torch import nn

from mmdoconv import (InvalidCheckpointError, UnsafeCheckpointError,
                      load_checkpoint_file)
from mmdoconv.utils import checkpoint as safe_checkpoint
from mmdoconv.utils import safe_unpickle
from toy import ToyNet, toy_runner

MARKER = 'payload_ran'


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class _Partial:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (functools.partial(os.system, f'touch {self.marker}'), ())


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f'open({str(self.marker)!r}, "w").close()', ))


class _GetattrEscape:
    """The allowed getattr name reaching something other than statistics."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '_statistics_methods'))


class _ObjectArray:
    """An object-dtype array whose bytes would be read as object pointers."""

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0, ), b'b'),
                (1, (4, ), np.dtype('O'), False, b'\x41' * 32))


class _StructuredObjectArray:
    def __reduce__(self):
        dtype = np.dtype([('a', 'O'), ('b', 'f8')])
        return (np._core.multiarray._reconstruct, (np.ndarray, (0, ), b'b'),
                (1, (2, ), dtype, False, b'\x41' * 32))


class _ShortArray:
    """Fewer data bytes than the shape claims: numpy would read past them."""

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0, ), b'b'),
                (1, (1000, ), np.dtype('f8'), False, b'\x00' * 8))


class _HistoryBufferMutation:
    """HistoryBuffer.__setstate__ would write this into the class-wide dict."""

    def __reduce__(self):
        return (HistoryBuffer, (), {
            'max_length': 10,
            '_log_history': np.zeros(1),
            '_count_history': np.ones(1),
            'statistics_methods': {'mean': HistoryBuffer.min},
        })


def _mmengine_like(payload):
    """A payload deep inside what looks like a real mmengine checkpoint."""
    return {
        'meta': {'epoch': 1, 'seed': np.int64(0)},
        'state_dict': OrderedDict(weight=torch.zeros(2)),
        'message_hub': {'log_scalars': {'train/loss': payload}},
    }


PAYLOADS = {
    'os.system': lambda m: {'state_dict': {}, 'meta': _System(m)},
    'partial': lambda m: {'meta': _Partial(m)},
    'exec': lambda m: {'meta': _Exec(m)},
    'nested': lambda m: _mmengine_like(_System(m)),
    'getattr': lambda m: _mmengine_like(_GetattrEscape()),
    'object-array': lambda m: _mmengine_like(_ObjectArray()),
    'structured-array': lambda m: _mmengine_like(_StructuredObjectArray()),
    'short-array': lambda m: _mmengine_like(_ShortArray()),
    'history-buffer': lambda m: _mmengine_like(_HistoryBufferMutation()),
}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

    def log_message(self, *args):
        pass


@pytest.fixture(scope='module')
def http_root(tmp_path_factory):
    """A bounded HTTP server on 127.0.0.1, stopped when the module ends."""
    root = tmp_path_factory.mktemp('served')
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _hub_file(url):
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(url))


def _via_cache(url_of_name):
    """Load through a scheme that resolves to a URL found in the hub cache."""

    def load(path, scheme_path):
        target = _hub_file(url_of_name())
        os.makedirs(osp.dirname(target), exist_ok=True)
        os.replace(path, target)
        return CheckpointLoader.load_checkpoint(scheme_path)

    return load


def _runner_load_from(path, tmp_path):
    toy_runner(tmp_path / 'work', load_from=path).load_or_resume()


def _runner_resume(path, tmp_path):
    toy_runner(tmp_path / 'work', load_from=path,
               resume=True).load_or_resume()


ENTRY_POINTS = {
    'load_checkpoint_file': lambda p, t, h: load_checkpoint_file(p),
    'CheckpointLoader local': lambda p, t, h: CheckpointLoader.load_checkpoint(
        p),
    'mmengine load_checkpoint': lambda p, t, h: load_checkpoint(
        nn.Linear(2, 2), p),
    'http://': lambda p, t, h: _http(p, h),
    'https:// (hub cache)': lambda p, t, h: _via_cache(
        lambda: 'https://example.invalid/crafted.pth')(
            p, 'https://example.invalid/crafted.pth'),
    'torchvision://': lambda p, t, h: _via_cache(
        lambda: get_torchvision_models()['resnet50'])(
            p, 'torchvision://resnet50'),
    'open-mmlab://': lambda p, t, h: _via_cache(
        lambda: get_external_models()['resnet50_v1c'])(
            p, 'open-mmlab://resnet50_v1c'),
    'mmcls://': lambda p, t, h: _via_cache(
        lambda: get_mmcls_models()['mobilenet_v2'])(p,
                                                    'mmcls://mobilenet_v2'),
    'Runner load_from': lambda p, t, h: _runner_load_from(p, t),
    'Runner resume': lambda p, t, h: _runner_resume(p, t),
    'Pretrained init_cfg (http)': lambda p, t, h: _pretrained(p, h),
    'PretrainedDOConv init_cfg (http)': lambda p, t, h: _pretrained(
        p, h, 'PretrainedDOConv'),
}


def _http(path, http_root):
    root, url = http_root
    os.replace(path, root / osp.basename(path))
    return CheckpointLoader.load_checkpoint(f'{url}/{osp.basename(path)}')


def _pretrained(path, http_root, init_type='Pretrained'):
    from mmengine.model import BaseModule
    root, url = http_root
    name = f'{init_type}_{osp.basename(path)}'
    os.replace(path, root / name)
    module = BaseModule(
        init_cfg=dict(type=init_type, checkpoint=f'{url}/{name}'))
    module.layer = nn.Linear(2, 2)
    module.init_weights()


@pytest.fixture
def isolated_hub(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)


@pytest.mark.parametrize('entry', sorted(ENTRY_POINTS))
@pytest.mark.parametrize('payload', sorted(PAYLOADS))
def test_crafted_checkpoint_matrix(payload, entry, tmp_path, http_root,
                                   isolated_hub):
    marker = tmp_path / MARKER
    path = tmp_path / f'crafted_{payload}_{abs(hash(entry))}.pth'
    torch.save(PAYLOADS[payload](marker), path)
    methods_before = dict(HistoryBuffer._statistics_methods)
    with pytest.raises(UnsafeCheckpointError, match='refusing to load'):
        ENTRY_POINTS[entry](str(path), tmp_path, http_root)
    assert not marker.exists(), 'the payload ran'
    assert HistoryBuffer._statistics_methods == methods_before
    assert HistoryBuffer([1., 3.], [1, 1]).statistics('mean') == 2.0


@pytest.mark.parametrize('payload', ['os.system', 'exec', 'partial'])
def test_payloads_are_live_without_the_guard(payload, tmp_path):
    """The crafted files really run code when loaded the unsafe way, so the
    matrix above tests a guard, not a harmless file."""
    marker = tmp_path / MARKER
    torch.save(PAYLOADS[payload](marker), tmp_path / 'crafted.pth')
    torch.load(tmp_path / 'crafted.pth', weights_only=False)
    assert marker.exists()


def test_every_mmengine_scheme_has_a_safe_loader():
    """A scheme registered without our loader would slip past the matrix."""
    ours = set(safe_checkpoint.SAFE_LOADERS.values())
    for prefix, loader in CheckpointLoader._schemes.items():
        assert loader in ours, f'{prefix!r} loads with {loader!r}'


def test_plain_torch_load_is_not_widened(tmp_path):
    """The allowlist is scoped to our loads: importing mmdoconv does not
    make a plain weights_only torch.load accept numpy or HistoryBuffer."""
    path = tmp_path / 'numpy.pth'
    torch.save({'array': np.zeros(2)}, path)
    with pytest.raises(pickle.UnpicklingError, match='Unsupported global'):
        torch.load(path, weights_only=True)
    allowed = torch.serialization.get_safe_globals()
    assert not any(pair in allowed for pair in safe_unpickle.safe_globals())
    assert not any(getattr(g, '__module__', '').startswith('numpy')
                   for g in allowed)
    assert load_checkpoint_file(str(path))['array'].tolist() == [0.0, 0.0]


def test_numpy_and_history_buffer_data_round_trip(tmp_path):
    history = HistoryBuffer([1.5, 2.5], [1, 2], max_length=7)
    checkpoint = {
        'meta': {
            'seed': np.int64(3), 'flag': np.bool_(True),
            'big_endian': np.arange(6, dtype='>f4').reshape(2, 3),
            'fortran': np.asfortranarray(np.arange(6).reshape(2, 3)),
            'dtype': np.dtype('uint8'), 'empty': np.zeros((0, 3)),
        },
        'message_hub': {'log_scalars': {'train/loss': history}},
    }
    torch.save(checkpoint, tmp_path / 'ok.pth')
    loaded = load_checkpoint_file(str(tmp_path / 'ok.pth'))
    meta = loaded['meta']
    assert type(meta['seed']) is np.int64 and meta['seed'] == 3
    assert meta['flag'] is np.True_
    np.testing.assert_array_equal(meta['big_endian'],
                                  checkpoint['meta']['big_endian'])
    assert meta['big_endian'].dtype == np.dtype('>f4')
    np.testing.assert_array_equal(meta['fortran'],
                                  checkpoint['meta']['fortran'])
    assert meta['dtype'] == np.dtype('uint8')
    assert meta['empty'].shape == (0, 3)
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert type(buffer) is HistoryBuffer and buffer.max_length == 7
    np.testing.assert_array_equal(buffer.data[0], [1.5, 2.5])
    np.testing.assert_array_equal(buffer.data[1], [1, 2])
    assert buffer.statistics('mean') == 2.0 / 3 * 2


def test_mmengine_checkpoint_resumes(tmp_path):
    """A real mmengine checkpoint (message hub, optimizer) resumes."""
    runner = toy_runner(tmp_path, max_iters=2)
    runner.train()
    checkpoint = load_checkpoint_file(osp.join(tmp_path, 'iter_2.pth'))
    assert 'message_hub' in checkpoint and 'optimizer' in checkpoint
    resumed = toy_runner(tmp_path, max_iters=4, resume=True)
    resumed.train()
    assert resumed.iter == 4
    assert len(resumed.message_hub.get_scalar('train/loss').data[0]) >= 2


def test_http_checkpoint_loads(tmp_path, http_root, isolated_hub):
    root, url = http_root
    model = ToyNet()
    torch.save({'state_dict': model.state_dict(), 'meta': {}},
               root / 'good.pth')
    loaded = CheckpointLoader.load_checkpoint(f'{url}/good.pth')
    for key, value in model.state_dict().items():
        assert torch.equal(loaded['state_dict'][key], value)
    assert osp.isfile(_hub_file(f'{url}/good.pth'))


@pytest.mark.parametrize('content,reason', [
    (b'', 'EOFError'),
    (b'hello, not a checkpoint\n', 'not a readable'),
    (os.urandom(4096), 'not a readable'),
    ('truncated', 'zip archive'),
])
def test_unreadable_file_is_named_not_called_unsafe(content, reason,
                                                    tmp_path):
    path = tmp_path / 'bad.pth'
    if content == 'truncated':
        torch.save({'w': torch.zeros(100)}, path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(InvalidCheckpointError, match=reason) as info:
        load_checkpoint_file(str(path))
    assert 'bad.pth' in str(info.value)
    assert 'run code' not in str(info.value)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint_file(str(tmp_path / 'nope.pth'))


def test_a_class_the_user_allowlists_loads_through_every_scheme(tmp_path):
    """The documented way in for a trusted checkpoint holding a class of
    one's own: ``torch.serialization.add_safe_globals``.  Refused before
    (the error says how), loaded after, and our stand-ins stay scoped."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from trusted_meta import TrustedMeta
    path = str(tmp_path / 'meta.pth')
    torch.save({'state_dict': {'w': torch.ones(2)},
                'meta': {'info': TrustedMeta('run', 3)}}, path)
    before = list(torch.serialization.get_safe_globals())
    with pytest.raises(UnsafeCheckpointError,
                       match=r'TrustedMeta.*add_safe_globals'):
        CheckpointLoader.load_checkpoint(path, 'cpu')
    torch.serialization.add_safe_globals([TrustedMeta])
    try:
        checkpoint = CheckpointLoader.load_checkpoint(path, 'cpu')
        assert checkpoint['meta']['info'] == TrustedMeta('run', 3)
        assert set(torch.serialization.get_safe_globals()) == set(
            before) | {TrustedMeta}
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
