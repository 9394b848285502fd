"""DO-Conv is right on every path that reads ``conv.weight`` or traces a conv.

Each path runs a model with non-zero D and is compared with the plain model
folded from it (fold_doconv), which is what the DO-Conv model computes.
"""
import copy

import pytest
import torch
from mmcv.cnn import ConvModule, fuse_conv_bn
from torch import nn

from mmdoconv import DOConv2d, count_doconv, fold_doconv

D_MULS = [None, 16]  # D_mul == M*N (4-D W like a kernel) and D_mul > M*N


def _random_d(model, std=0.3):
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DOConv2d) and module.D is not None:
                module.D.normal_(0, std)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    return model


def _folded(model):
    plain = copy.deepcopy(model)
    fold_doconv(plain)
    assert count_doconv(plain) == 0
    return plain


class _ConvBN(nn.Module):

    def __init__(self, d_mul, groups=1):
        super().__init__()
        self.conv = DOConv2d(8, 8, 3, padding=1, groups=groups, D_mul=d_mul,
                             bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = DOConv2d(8, 4, 3, padding=1, D_mul=d_mul)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn(self.conv(x)))))


@pytest.mark.parametrize('d_mul', D_MULS)
def test_efficient_conv_bn_eval_of_conv_module(d_mul):
    """mmcv computes with conv._conv_forward(x, conv.weight * coeff, ...)."""
    module = _random_d(ConvModule(
        8, 8, 3, padding=1, conv_cfg=dict(type='DOConv', D_mul=d_mul),
        norm_cfg=dict(type='BN'), efficient_conv_bn_eval=True)).eval()
    assert isinstance(module.conv, DOConv2d) and module.conv.D is not None
    x = torch.randn(2, 8, 9, 9)
    expected = _folded(module)(x)
    with torch.no_grad():
        got = module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # A wrong answer (W instead of W') would be far off: the test can fail.
    module.conv.D.data.zero_()
    assert (module(x) - expected).abs().max() > 1e-2


@pytest.mark.parametrize('d_mul', D_MULS)
@pytest.mark.parametrize('groups', [1, 8])
def test_mmcv_fuse_conv_bn(d_mul, groups):
    model = _random_d(_ConvBN(d_mul, groups)).eval()
    x = torch.randn(2, 8, 7, 7)
    expected = _folded(model)(x)
    fused = fuse_conv_bn(copy.deepcopy(model))
    assert isinstance(fused.bn, nn.Identity) and isinstance(fused.bn2,
                                                            nn.Identity)
    assert count_doconv(fused) == 2  # fused with D kept
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_folded(fused)(x), expected, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize('d_mul', D_MULS)
def test_torch_fuse_conv_bn_eval(d_mul):
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    model = _random_d(_ConvBN(d_mul)).eval()
    x = torch.randn(2, 8, 7, 7)
    expected = model.bn(model.conv(x))
    fused = fuse_conv_bn_eval(model.conv, model.bn)
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('d_mul', D_MULS)
def test_fx_symbolic_trace(training, d_mul):
    model = _random_d(_ConvBN(d_mul, groups=2)).train(training)
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target.__name__ for n in traced.graph.nodes
             if n.op == 'call_function' and hasattr(n.target, '__name__')]
    assert calls.count('compose_weight') == 2
    x = torch.randn(2, 8, 7, 7)
    torch.manual_seed(1)
    expected = model(x)
    torch.manual_seed(1)
    torch.testing.assert_close(traced(x), expected, rtol=0, atol=0)
    if training:  # gradients flow to D through the traced graph
        traced(x).sum().backward()
        assert model.conv.D.grad is not None
        assert model.conv.D.grad.abs().sum() > 0


def test_torch_export_keeps_working():
    model = _random_d(_ConvBN(None, groups=2)).eval()
    x = torch.randn(2, 8, 7, 7)
    exported = torch.export.export(model, (x, ))
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5,
                               atol=1e-5)


def test_mmengine_efficient_conv_bn_eval_option(tmp_path, synthetic_data):
    """``efficient_conv_bn_eval = ['backbone']`` in a config with the switch:
    the Runner trains and validates, every DO-Conv + BN pair of the backbone
    is fused, and the fused eval forward gives the model's outputs."""
    from mmengine.config import Config

    from mmdoconv.utils.cli import build_runner
    from runs import classification_options, config_path
    cfg = Config.fromfile(config_path('resnet', 'resnet18-doconv_8xb32_in1k.py'))
    cfg.merge_from_dict(classification_options(synthetic_data['imagenet']))
    cfg.work_dir = str(tmp_path)
    cfg.efficient_conv_bn_eval = ['backbone']
    runner = build_runner(cfg)
    reference = copy.deepcopy(runner.model)
    runner.train()
    model = runner.model.eval()
    code = model.backbone.forward.__self__.code  # the traced GraphModule's
    assert code.count('efficient_conv_bn_eval_control') == 17 + 3  # + 1x1s
    reference.load_state_dict(model.state_dict())
    reference.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, DOConv2d):
                layer.D.add_(0.1 * torch.randn(layer.D.shape,
                                               generator=generator))
        reference.load_state_dict(model.state_dict())
        x = torch.randn(2, 3, 32, 32, generator=generator)
        expected = reference.backbone(x)[-1]
        torch.testing.assert_close(model.backbone(x)[-1], expected,
                                   rtol=1e-4, atol=1e-4)
