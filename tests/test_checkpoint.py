"""Checkpoint loading on torch >= 2.6: mmengine checkpoints load, payloads don't run."""
import os
import os.path as osp

import pytest
import torch

from mmdoconv import UnsafeCheckpointError, load_checkpoint_file
from toy import toy_runner


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / 'payload_ran'
    path = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {}, 'meta': _Payload(marker)}, path)
    return str(path), marker


def test_crafted_checkpoint_is_refused_and_never_runs(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError,
                       match=r"refusing to load checkpoint .*crafted\.pth.*"
                       r"(posix|os)\.system"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_runner_load_from_refuses_crafted_checkpoint(tmp_path, crafted):
    path, marker = crafted
    runner = toy_runner(tmp_path / 'work', load_from=path)
    with pytest.raises(UnsafeCheckpointError, match='system'):
        runner.load_or_resume()
    assert not marker.exists()


def test_mmengine_checkpoint_resumes_with_weights_only(tmp_path):
    """Without the allowlist this fails with 'Unsupported global'."""
    runner = toy_runner(tmp_path, max_iters=2)
    runner.train()
    checkpoint = load_checkpoint_file(osp.join(tmp_path, 'iter_2.pth'))
    assert 'message_hub' in checkpoint and 'optimizer' in checkpoint
    resumed = toy_runner(tmp_path, max_iters=4, resume=True)
    resumed.train()
    assert resumed.iter == 4
    # mmengine's message hub (HistoryBuffer) came back with its history.
    assert len(resumed.message_hub.get_scalar('train/loss').data[0]) >= 2


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint_file(str(tmp_path / 'nope.pth'))
