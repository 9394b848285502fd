"""DO-Conv through mmcv's registry, ConvModule and real OpenMMLab ResNets."""
import pytest
import torch
from mmcv.cnn import ConvModule, build_conv_layer
from mmengine.registry import DefaultScope
from torch import nn

import mmdoconv  # noqa: F401  (registers DOConv)
from mmdoconv import DOConv2d, count_doconv, fold_doconv, fold_state_dict

SCOPES = ['mmdet', 'mmseg', 'mmpretrain']


def _registry(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


@pytest.mark.parametrize('scope', SCOPES)
def test_build_conv_layer_from_each_scope(scope):
    _registry(scope)
    with DefaultScope.overwrite_default_scope(scope):
        layer = build_conv_layer(dict(type='DOConv', D_mul=16), 4, 8, 3)
        assert isinstance(layer, DOConv2d) and layer.D_mul == 16
        # mmcv's own conv-type tests build from Conv2d's arguments alone.
        layer = build_conv_layer(
            dict(type='DOConv'), in_channels=4, out_channels=8, kernel_size=3,
            dilation=2)
        assert isinstance(layer, DOConv2d) and layer.dilation == (2, 2)
        assert layer(torch.randn(1, 4, 9, 9)).shape == (1, 8, 5, 5)
        pointwise = build_conv_layer(dict(type='DOConv', D_mul=16), 4, 8, 1)
        assert type(pointwise) is nn.Conv2d
        with pytest.raises(ValueError, match='but got 8'):
            build_conv_layer(dict(type='DOConv', D_mul=8), 4, 8, 3)
    registry = _registry(scope)
    built = registry.build(
        dict(type='DOConv', in_channels=4, out_channels=8, kernel_size=3))
    assert isinstance(built, DOConv2d)


def test_conv_module_with_doconv():
    torch.manual_seed(0)
    module = ConvModule(
        4, 8, 3, padding=1, conv_cfg=dict(type='DOConv'),
        norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))
    assert isinstance(module.conv, DOConv2d)
    assert not module.with_bias  # ConvModule read DOConv2d's attributes
    module.init_weights()  # mmcv's kaiming_init on a DOConv2d
    assert torch.count_nonzero(module.conv.D) == 0
    module.train()
    out = module(torch.randn(2, 4, 6, 6))
    out.mean().backward()
    assert module.conv.D.grad is not None


def _resnets(scope):
    if scope == 'mmdet':
        from mmdet.models.backbones import ResNet
        return lambda **kw: ResNet(depth=50, **kw)
    if scope == 'mmseg':
        from mmseg.models.backbones import ResNetV1c
        return lambda **kw: ResNetV1c(depth=50, **kw)
    from mmpretrain.models.backbones import ResNet
    return lambda **kw: ResNet(depth=50, **kw)


@pytest.mark.parametrize('scope', SCOPES)
def test_plain_resnet_checkpoint_loads_strict_into_doconv_resnet(scope):
    build = _resnets(scope)
    torch.manual_seed(0)
    plain = build()
    doconv = build(conv_cfg=dict(type='DOConv'))
    plain.eval()  # OpenMMLab ResNets' train() returns None: no chaining
    doconv.eval()
    # Pytorch-style ResNet-50: the 7x7 stem and 16 bottleneck 3x3 convs;
    # V1c: a deep stem of three 3x3 convs instead.  1x1 convs stay plain.
    expected = 19 if scope == 'mmseg' else 17
    assert count_doconv(doconv) == expected
    assert sum(type(m) is nn.Conv2d for m in doconv.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in plain.modules()) - expected
    doconv.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(doconv(x), plain(x)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        before = [t.clone() for t in plain(x)]
        # With non-zero D the upstream plain model, given the folded state
        # dict, computes what the DO-Conv model computes.
        for module in doconv.modules():
            if isinstance(module, DOConv2d) and module.D is not None:
                module.D.normal_(std=0.1)
        plain.load_state_dict(fold_state_dict(doconv.state_dict()),
                              strict=True)
        changed = False
        for ours, theirs in zip(doconv(x), plain(x)):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        for ours, original in zip(doconv(x), before):
            changed |= (ours - original).abs().max().item() > 1e-3
        assert changed  # D really changed the model


def test_resnet50_fold_error_with_perturbed_d(capsys):
    """The folding error quoted in docs/en/user_guides/folding_and_deployment.md
    (ResNet-50, D ~ N(0, 0.1))."""
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    model = ResNet(depth=50, conv_cfg=dict(type='DOConv'))
    model.eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DOConv2d):
                module.D.normal_(std=0.1)
        x = torch.randn(2, 3, 224, 224)
        unfolded = model(x)
        assert fold_doconv(model) == 17
        folded = model(x)
    errors = [(a - b).abs().max().item() for a, b in zip(unfolded, folded)]
    scale = max(a.abs().max().item() for a in unfolded)
    with capsys.disabled():
        print(f'\nResNet-50 fold: max |unfolded - folded| per stage '
              f'{["%.2e" % e for e in errors]}, max |output| {scale:.2f}')
    # The docs claim exactly 0.0: the unfolded forward convolves with W'
    # composed by the same function the fold uses.
    assert max(errors) == 0.0
