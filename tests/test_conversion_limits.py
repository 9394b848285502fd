"""What the switch leaves plain on purpose, and the memory it may add.

Parametrized convs (weight norm, spectral norm) were converted and lost
their parametrization silently; huge kernels (RepLKNet's 31x31) exhausted
memory half-way through a conversion.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from mmdoconv import DOConv2d, convert_to_doconv
from mmdoconv.cnn.conversion import added_parameters


def _parametrized_model():
    return nn.Sequential(
        parametrizations.weight_norm(nn.Conv2d(4, 6, 3, padding=1)),
        parametrizations.spectral_norm(nn.Conv2d(6, 6, 3, padding=1)),
        nn.utils.weight_norm(nn.Conv2d(6, 6, 3, padding=1)),
        nn.utils.spectral_norm(nn.Conv2d(6, 6, 3, padding=1)),
        nn.Conv2d(6, 2, 3, padding=1))


def test_parametrized_convs_keep_their_parametrization_on_w():
    """torch's parametrize API (weight norm, spectral norm) moves onto the
    DO-Conv layer's W: at D = I one training step gives the plain
    parametrized model's outputs and gradients exactly, spectral norm's
    power-iteration state included (it took a step during conversion
    before: reading ``weight`` in training mode runs it); the old hooks stay
    plain, named.  Mutation: dropping the transfer fails (the names and
    gradients of the parametrization's tensors are gone)."""
    torch.manual_seed(0)
    plain = _parametrized_model()
    torch.manual_seed(0)  # the same model again (the hooks cannot deepcopy)
    model = _parametrized_model()
    report = convert_to_doconv(model)
    assert report.converted == ['0', '1', '4']
    assert report.skipped == {
        '2': 'parametrized weight (WeightNorm hook; the '
             'torch.nn.utils.parametrizations form converts)',
        '3': 'parametrized weight (SpectralNorm hook; the '
             'torch.nn.utils.parametrizations form converts)'}
    assert [n for n, _ in model.named_parameters() if not n.endswith('.D')] \
        == [n for n, _ in plain.named_parameters()]
    assert isinstance(model[0], DOConv2d) and parametrize.is_parametrized(
        model[0], 'weight') and parametrize.is_parametrized(model[1])
    x = torch.randn(2, 4, 8, 8)
    expected, got = plain(x), model(x)
    assert torch.equal(got, expected)
    expected.square().mean().backward()
    got.square().mean().backward()
    grads = dict(model.named_parameters())
    for name, parameter in plain.named_parameters():
        assert torch.equal(grads[name].grad, parameter.grad), name
    assert torch.equal(model[1].parametrizations.weight[0]._u,
                       plain[1].parametrizations.weight[0]._u)
    assert model[0].D.grad.abs().max() > 0 and model[1].D.grad.abs().max() > 0


def test_parametrized_convs_fold_to_what_they_compute():
    """With non-zero D the layer convolves with D^T o parametrization(W);
    fold and switch_to_deploy bake that in (no parametrization left)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        parametrizations.weight_norm(nn.ConvTranspose2d(4, 6, 2, stride=2)),
        parametrizations.spectral_norm(nn.Conv2d(6, 6, 3, padding=1)))
    convert_to_doconv(model)
    with torch.no_grad():
        for layer in model:
            layer.D.normal_(0, 0.3)
    model.eval()
    x = torch.randn(2, 4, 5, 5)
    expected = model(x)
    folded = [layer.fold() for layer in model]
    assert not any(parametrize.is_parametrized(layer) for layer in folded)
    torch.testing.assert_close(nn.Sequential(*folded)(x), expected)
    for layer in model:
        layer.switch_to_deploy()
        assert not parametrize.is_parametrized(layer) and layer.D is None
    torch.testing.assert_close(model(x), expected)


def test_parametrized_conv_with_a_larger_d_mul_stays_plain():
    model = nn.Sequential(
        parametrizations.weight_norm(nn.Conv2d(4, 6, 3, padding=1)))
    report = convert_to_doconv(model, D_mul=16)
    assert report.converted == [] and report.skipped == {
        '0': 'parametrized weight (WeightNorm) with D_mul=16 > 9'}


def test_conversion_adding_more_than_the_model_is_refused_before_anything():
    """A 31x31 depthwise conv's D is 961 times its W."""
    model = nn.Sequential(nn.Conv2d(8, 8, 31, padding=15, groups=8),
                          nn.Conv2d(8, 8, 3, padding=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert added_parameters(model[0], 961) == 8 * 961 * 961
    with pytest.raises(ValueError) as error:
        convert_to_doconv(model, max_d_params=10**6)
    message = str(error.value)
    assert ('converting would add 7,388,816 parameters (28.2 MiB in '
            'float32) in 2 convs') in message
    assert 'the largest: 0 (+7,388,168, 28.2 MiB in float32)' in message
    assert "exclude=['0', '1']" in message and 'not changed' in message
    assert not any(isinstance(m, DOConv2d) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    report = convert_to_doconv(model, exclude=['0'], max_d_params=10**6)
    assert report.converted == ['1'] and report.added_params == 8 * 9 * 9
    assert '(+648 parameters)' in str(report)
    with pytest.raises(ValueError, match=r'max_d_params must be an int'):
        convert_to_doconv(nn.Sequential(nn.Conv2d(2, 2, 3)), max_d_params=-1)


def test_replknet_31b_is_refused_at_once():
    """mmpretrain's RepLKNet-31B (31x31 .. 27x27 depthwise kernels): about
    5 G parameters of D, which took the machine's memory half-way through
    the conversion.  Now one error before any allocation."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(type='RepLKNet', arch='31B'))
    with pytest.raises(ValueError, match=r'converting would add [\d,]+ '
                       r'parameters \((1[5-9]|2\d)\.\d GiB'):
        convert_to_doconv(model)
    assert not any(isinstance(m, DOConv2d) for m in model.modules())


@pytest.mark.parametrize('d_mul', [None, 'M+2xN+2'])
def test_adaptive_padding_convs_convert_and_fold_back_to_their_class(d_mul):
    """mmcv's Conv2dAdaptivePadding (EfficientNet's convs) was left plain
    as 'own forward'.  Its twin pads as mmcv does (from kernel_size: a
    D_mul > M*N weight has another shape) and folds back to the class."""
    import torch.nn.functional as F
    from mmcv.cnn.bricks import Conv2dAdaptivePadding

    from mmdoconv import fold_doconv
    from mmdoconv.cnn.adaptive_padding import DOConv2dAdaptivePadding
    torch.manual_seed(0)
    model = nn.Sequential(Conv2dAdaptivePadding(3, 4, 3, stride=2),
                          Conv2dAdaptivePadding(4, 4, (5, 3), groups=4))
    x = torch.randn(2, 3, 11, 10)
    with torch.no_grad():
        expected = model(x)
    report = convert_to_doconv(model, D_mul=d_mul)
    assert report.converted == ['0', '1']
    assert all(type(m) is DOConv2dAdaptivePadding for m in model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
        for layer in model:
            layer.D.normal_(0, 0.3)
        unfolded = model(x)
        # The same padding, then the conv with W' (what folding gives).
        kernels = [layer._compose(layer.weight) for layer in model]
        assert fold_doconv(model) == 2
        assert all(type(m) is Conv2dAdaptivePadding for m in model)
        folded = model(x)
        assert torch.equal(folded, unfolded)
        assert all(torch.equal(m.weight, k) for m, k in zip(model, kernels))
        assert not torch.allclose(folded, expected, atol=1e-3)
    again = nn.Sequential(Conv2dAdaptivePadding(3, 4, 3, stride=2),
                          Conv2dAdaptivePadding(4, 4, (5, 3), groups=4))
    again.load_state_dict(model.state_dict(), strict=True)
    assert F.mse_loss(again(x), folded) == 0


def test_every_conv_kind_is_converted_and_kinds_leaves_one_out():
    """``nn.Sequential(nn.ConvTranspose2d(4, 6, 3))`` was reported as
    "converted 0 ...; left plain: none"; transposed, 1-D and 3-D convs now
    convert (mutation: dropping a kind from CONV_KINDS fails), ``kinds``
    leaves the others plain and named, and a conv of no known kind is still
    named."""

    class OwnKind(nn.modules.conv._ConvNd):  # a direct _ConvNd subclass
        pass

    def model():
        own = OwnKind(4, 4, (3, ), (1, ), (0, ), (1, ), False, (0, ), 1,
                      True, 'zeros')
        return nn.Sequential(nn.ConvTranspose2d(4, 6, 3), nn.Conv1d(4, 4, 3),
                             nn.Conv3d(4, 4, 3), nn.ConvTranspose2d(4, 4, 1),
                             nn.Conv2d(4, 4, 3), nn.ConvTranspose1d(4, 4, 2),
                             nn.ConvTranspose3d(4, 4, 2), own)

    everything = model()
    report = convert_to_doconv(everything)
    assert report.converted == ['0', '1', '2', '4', '5', '6']
    assert report.skipped == {'3': 'pointwise (1x1)',
                              '7': 'no DO-Conv layer for OwnKind yet'}
    assert [type(everything[i]).__name__ for i in (0, 1, 2, 5, 6)] == [
        'DOConvTranspose2d', 'DOConv1d', 'DOConv3d', 'DOConvTranspose1d',
        'DOConvTranspose3d']
    only_2d = model()
    report = convert_to_doconv(only_2d, kinds=['Conv2d'])
    assert report.converted == ['4']
    assert report.skipped['0'] == 'kind not converted (ConvTranspose2d)'
    assert report.skipped['2'] == 'kind not converted (Conv3d)'
    assert 'left plain: 1 kind not converted (Conv1d)' in str(report)
    with pytest.raises(ValueError, match=r"kinds must name conv kinds .*"
                       r"'Conv4d'"):
        convert_to_doconv(model(), kinds=['Conv2d', 'Conv4d'])


def test_masked_convs_convert_and_fold_back_to_their_class():
    """mmcv's MaskedConv2d (GA-RetinaNet's retina_cls / retina_reg) was
    left plain as 'own forward'.  Its twin is the DO-Conv layer without a
    mask (training: mmcv's masked op has no backward, and no CPU kernel) and
    folds back to a MaskedConv2d holding W'; the masked path runs on CUDA in
    tools/misc/gpu_check.py."""
    from mmcv.ops import MaskedConv2d

    from mmdoconv import fold_doconv
    from mmdoconv.cnn.masked_conv import DOMaskedConv2d
    torch.manual_seed(0)
    model = nn.Sequential(MaskedConv2d(3, 4, 3, padding=1))
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    assert convert_to_doconv(model).converted == ['0']
    assert type(model[0]) is DOMaskedConv2d
    assert torch.equal(model(x), expected)
    with torch.no_grad():
        model[0].D.normal_(0, 0.3)
        unfolded = model(x)
        kernel = model[0]._compose(model[0].weight)
        fold_doconv(model)
    assert type(model[0]) is MaskedConv2d
    assert torch.equal(model[0].weight, kernel)
    assert torch.equal(model(x), unfolded)
