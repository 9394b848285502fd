"""An unfolded DO-Conv checkpoint loaded into plain convs loads folded.

Before, a plain config with ``load_from=`` an unfolded checkpoint trained
and evaluated from W (only mmengine's "unexpected key ... .D" warning):
logits off by 1.5 of 15 from the DO-Conv model's.
"""
import logging
import os.path as osp

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.runner import load_checkpoint
from torch import nn

from mmdoconv import DOConv2d
from mmdoconv.utils.cli import build_model, check_checkpoint_matches_model, \
    load_config
from runs import config_path
from toy import ToyDataset, ToyNet, toy_runner


def _doconv_toy_checkpoint(path) -> ToyNet:
    torch.manual_seed(0)
    model = ToyNet()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, DOConv2d):
                layer.D.normal_(0, 0.5)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return model.eval()


class _Messages(logging.Handler):

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_plain_runner_load_from_an_unfolded_checkpoint_computes_w_prime(
        tmp_path):
    """What ``tools/train.py PLAIN_CONFIG --cfg-options load_from=...``
    does: the Runner loads the checkpoint into the plain model, which then
    gives the DO-Conv model's logits.  Fails if the load keeps W (mutation:
    mmdoconv not wrapping mmengine's ``load_state_dict``)."""
    doconv = _doconv_toy_checkpoint(tmp_path / 'doconv.pth')
    runner = toy_runner(tmp_path / 'plain', model=ToyNet(conv=nn.Conv2d),
                        load_from=str(tmp_path / 'doconv.pth'))
    messages = _Messages()
    MMLogger.get_current_instance().addHandler(messages)
    try:
        runner.load_or_resume()
    finally:
        MMLogger.get_current_instance().removeHandler(messages)
    x = torch.stack([ToyDataset()[i]['inputs'] for i in range(4)])
    plain = runner.model.eval()
    with torch.no_grad():
        expected = doconv(x)
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
        # W alone gives other logits: the check above is not trivial.
        with_w = ToyNet(conv=nn.Conv2d).eval()
        with_w.load_state_dict({k: v for k, v in doconv.state_dict().items()
                                if not k.endswith('.D')})
        assert (with_w(x) - expected).abs().max() > 1e-2
    folded = [m for m in messages.messages if 'loaded them folded' in m]
    assert len(folded) == 1 and 'D for 2 layers' in folded[0], \
        messages.messages


def test_stock_load_checkpoint_into_a_plain_resnet(tmp_path):
    """mmengine's ``load_checkpoint`` (test.py's and export_onnx.py's load,
    ``Pretrained`` init) with ``strict=True``, and test.py's up-front check:
    the plain ResNet-50 takes the unfolded checkpoint and computes what the
    DO-Conv ResNet-50 computes."""
    doconv = build_model(load_config(
        config_path('resnet', 'resnet50-doconv_8xb32_in1k.py')))
    with torch.no_grad():
        for layer in doconv.modules():
            if isinstance(layer, DOConv2d):
                layer.D.normal_(0, 0.1)
    path = str(tmp_path / 'doconv.pth')
    torch.save({'state_dict': doconv.state_dict()}, path)
    plain = build_model(load_config(
        config_path('resnet', 'resnet50_8xb32_in1k.py')))
    check_checkpoint_matches_model(plain, torch.load(path), path, 'plain')
    load_checkpoint(plain, path, strict=True)
    x = torch.randn(1, 3, 64, 64)
    doconv.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x, mode='tensor'),
                                   doconv(x, mode='tensor'),
                                   rtol=1e-4, atol=1e-4)
    # A DO-Conv model still loads its D as it is.
    again = build_model(load_config(
        config_path('resnet', 'resnet50-doconv_8xb32_in1k.py')))
    load_checkpoint(again, path, strict=True)
    assert torch.equal(again.backbone.conv1.D, doconv.backbone.conv1.D)
    assert osp.isfile(path)


def test_a_malformed_d_entry_for_a_plain_conv_is_one_named_error(tmp_path):
    """A crafted D (2-D) for a plain conv: named, as the tools' one line
    (IncompatibleCheckpointError), not a traceback from inside mmengine."""
    from mmdoconv import IncompatibleCheckpointError
    from mmdoconv.utils.cli import BAD_INPUT_ERRORS
    plain = nn.Sequential(nn.Conv2d(4, 4, 3))
    state = dict(plain.state_dict(), **{'0.D': torch.zeros(9, 9)})
    torch.save({'state_dict': state}, tmp_path / 'crafted.pth')
    before = plain[0].weight.detach().clone()
    with pytest.raises(IncompatibleCheckpointError,
                       match=r'cannot be folded: 0\.D must be a 3-D'):
        load_checkpoint(plain, str(tmp_path / 'crafted.pth'))
    assert IncompatibleCheckpointError in BAD_INPUT_ERRORS
    assert torch.equal(plain[0].weight, before)
