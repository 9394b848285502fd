"""convert_to_doconv: any nn.Module, exact outputs at D = I, a report."""
import pytest
import torch
import torchvision
from torch import nn

from mmdoconv import (DOConv2d, convert_to_doconv, count_doconv, fold_doconv,
                      fold_state_dict)


class _OwnForwardConv(nn.Conv2d):
    """Stands for DCN / ConvWS: a conv that computes differently."""

    def forward(self, x):
        return super().forward(x) * 2


class _BuiltDifferently(nn.Conv2d):
    """Only changes construction: converted."""

    def __init__(self, channels):
        super().__init__(channels, channels, 3, padding=1, bias=False)


class _Net(nn.Module):

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
            _BuiltDifferently(8), nn.Conv2d(8, 16, 1),
            nn.Conv2d(16, 16, (1, 3), padding=(0, 1), groups=4,
                      padding_mode='reflect'))
        self.special = _OwnForwardConv(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 3, padding=2, dilation=2)

    def forward(self, x):
        return self.head(self.special(self.body(self.stem(x))))


def test_converts_non_pointwise_convs_and_computes_exactly_the_same():
    torch.manual_seed(0)
    model = _Net().eval()
    model.stem.weight.requires_grad_(False)
    x = torch.randn(2, 3, 17, 19)
    before = model(x)
    report = convert_to_doconv(model)
    assert report.converted == ['stem', 'body.0', 'body.2', 'body.4', 'head']
    assert report.skipped == {'body.3': 'pointwise (1x1)',
                              'special': 'own forward (_OwnForwardConv)'}
    assert count_doconv(model) == 5
    assert isinstance(model.body[2], DOConv2d)
    assert not model.stem.weight.requires_grad and not model.training
    assert torch.equal(model(x), before)
    assert convert_to_doconv(model).converted == []  # a no-op the 2nd time
    # Trainable D, and the state dict has the plain keys plus D.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DOConv2d):
                module.D.normal_(0, 0.2)
    changed = model(x)
    assert (changed - before).abs().max() > 1e-2
    plain = _Net().eval()
    plain.load_state_dict(fold_state_dict(model.state_dict()), strict=True)
    torch.testing.assert_close(plain(x), changed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('d_mul', [16, 'M+2xN+2'])
def test_d_mul_above_kernel_size_keeps_the_output(d_mul):
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(1, 3, 16, 16)
    before = model(x)
    convert_to_doconv(model, exclude=['head', 'stem'], D_mul=d_mul)
    assert model.body[0].D_mul == (16 if d_mul == 16 else 25)
    assert type(model.head) is nn.Conv2d
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


def test_include_and_exclude_patterns_like_a_stage_ablation():
    model = torchvision.models.resnet18(weights=None)
    report = convert_to_doconv(model, include=['layer1', 'layer2'],
                               exclude='layer2.1*')
    assert all(name.startswith(('layer1', 'layer2.0'))
               for name in report.converted)
    assert report.skipped['conv1'] == 'not included'
    assert report.skipped['layer2.1.conv1'] == 'excluded'
    assert len(report.converted) == 4 + 2


def test_torchvision_model_built_without_weights():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    before = model(x)
    report = convert_to_doconv(model)
    assert len(report.converted) == 8  # VGG-11's eight 3x3 convs
    assert torch.equal(model(x), before)
    assert fold_doconv(model) == 8
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_random_d_init_changes_the_model_and_draws_he_normal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 32, 3))
    convert_to_doconv(model, D_init='random')
    d_full = model[0].D.detach() + torch.eye(9)
    assert d_full.std().item() == pytest.approx((2 / 9)**0.5, rel=0.1)


@pytest.mark.parametrize('kwargs,error,phrase', [
    (dict(include='neck.*'), ValueError, "include pattern 'neck.\\*' "),
    (dict(exclude=['head', 'nope']), ValueError, "exclude pattern 'nope'"),
    (dict(include=[3]), TypeError, 'module-name patterns'),
    (dict(D_mul=16), ValueError, 'stem: D_mul must be >= M\\*N = 25'),
    (dict(D_init='zeros'), ValueError, 'D_init must be one of'),
])
def test_bad_options_name_the_value(kwargs, error, phrase):
    model = _Net()
    with pytest.raises(error, match=phrase):
        convert_to_doconv(model, **kwargs)
    assert count_doconv(model) == 0  # refused before anything changed


def test_nothing_to_convert_is_reported():
    report = convert_to_doconv(nn.Sequential(nn.Conv2d(4, 4, 1)))
    assert report.converted == []
    assert report.skipped == {'0': 'pointwise (1x1)'}
    assert str(report) == ('converted 0 convs to DO-Conv; left plain: '
                           '1 pointwise (1x1)')
    with pytest.raises(TypeError, match='cannot replace the model itself'):
        convert_to_doconv(nn.Conv2d(4, 4, 3))


class _SharedConvHead(nn.Module):
    """Two branches holding one conv, as RTMDet's heads share their convs
    across pyramid levels."""

    def __init__(self):
        super().__init__()
        shared = nn.Conv2d(4, 4, 3, padding=1)
        self.level0 = nn.Sequential(shared, nn.ReLU())
        self.level1 = nn.Sequential(shared, nn.ReLU())

    def forward(self, x):
        return self.level0(x) + self.level1(x * 2)


def test_a_shared_conv_stays_shared_through_conversion_and_folding():
    torch.manual_seed(0)
    model = _SharedConvHead()
    report = convert_to_doconv(model)
    assert report.converted == ['level0.0']  # one module, listed once
    assert model.level0[0] is model.level1[0]
    assert isinstance(model.level1[0], DOConv2d)
    with torch.no_grad():
        model.level0[0].D.add_(0.1 * torch.randn_like(model.level0[0].D))
    x = torch.randn(2, 4, 8, 8)
    # Training updates the one D that both levels use.
    model(x).sum().backward()
    assert model.level1[0].D.grad.abs().max() > 0
    model.eval()
    with torch.no_grad():
        expected = model(x)
        assert fold_doconv(model) == 1
        assert model.level0[0] is model.level1[0]
        assert type(model.level1[0]) is nn.Conv2d
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # The plain model takes the folded weights strictly and computes the same.
    plain = _SharedConvHead().eval()
    plain.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)


def test_mmcv_conv2d_wrapper_is_converted_exactly():
    """mmcv's Conv2d wrapper (MaskIoUHead, pixel decoders) overrides forward
    only for empty inputs on torch < 1.4: it converts, with the same output
    at D = I; with a non-zero D it computes the paper's feature composition
    and folds to a plain conv computing the same.  Fails if the converted
    layer or its fold used W instead of W' (mutation: ``fold()`` copying
    ``self.weight``)."""
    from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d
    from mmcv.cnn.bricks.conv_ws import ConvWS2d

    from mmdoconv import fold_doconv
    from reference import feature_composition
    torch.manual_seed(0)
    model = nn.Sequential(MMCVConv2d(3, 4, 3, padding=1), nn.ReLU(),
                          ConvWS2d(4, 4, 3, padding=1)).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    report = convert_to_doconv(model)
    assert report.converted == ['0']
    assert report.skipped == {'2': 'own forward (ConvWS2d)'}
    with torch.no_grad():
        assert torch.equal(model(x), expected)
        layer = model[0]
        layer.D.normal_(0, 0.5)
        d_full = (layer.D + layer._identity).double()
        expected = feature_composition(
            x.double(), d_full, layer.weight.double().reshape(4, 3, 9),
            layer.bias.double(), kernel_size=(3, 3), stride=(1, 1),
            padding=(1, 1), dilation=(1, 1), groups=1,
            padding_mode='zeros')
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5,
                                   atol=1e-5)
        assert fold_doconv(model) == 1
        assert type(model[0]) is nn.Conv2d
        torch.testing.assert_close(model[0](x).double(), expected,
                                   rtol=1e-5, atol=1e-5)
