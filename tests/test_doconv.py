"""DOConv2d against the paper's feature composition, plain convs and autograd."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mmdoconv import DOConv2d, doconv_identity
from mmdoconv.cnn import doconv as doconv_module
from mmdoconv.cnn import recomposing_conv as recomposing_module
from reference import feature_composition, identity_part


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    in_per_group = draw(st.integers(1, 3))
    out_per_group = draw(st.integers(1, 3))
    in_channels = groups * in_per_group
    # DO-DConv: groups == in_channels (in_per_group == 1) is covered too.
    kernel_size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    kernel_numel = kernel_size[0] * kernel_size[1]
    d_mul = draw(st.one_of(st.none(),
                           st.integers(kernel_numel, 2 * kernel_numel + 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding_mode = draw(
        st.sampled_from(['zeros', 'reflect', 'replicate', 'circular']))
    same = draw(st.booleans())
    stride = (1, 1) if same else (draw(st.integers(1, 3)),
                                  draw(st.integers(1, 3)))
    padding = 'same' if same else (draw(st.integers(0, 2)),
                                   draw(st.integers(0, 2)))
    return dict(
        in_channels=in_channels,
        out_channels=groups * out_per_group,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
        padding_mode=padding_mode,
        D_mul=d_mul,
    )


def _perturb(layer: DOConv2d, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=generator,
                                    dtype=param.dtype))


@settings(max_examples=150, deadline=None)
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_matches_feature_composition(case, seed):
    layer = DOConv2d(**case, dtype=torch.float64)
    _perturb(layer, seed)
    kernel_h, kernel_w = layer.kernel_size
    kernel_numel = kernel_h * kernel_w
    # reflect padding needs the padded dims smaller than the input.
    x = torch.randn(2, case['in_channels'], 9, 10, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed + 1))
    if kernel_numel == 1:
        # Paper §4: 1x1 convs are not over-parameterized.
        assert layer.D is None
        plain_kwargs = {k: v for k, v in case.items() if k != 'D_mul'}
        plain = nn.Conv2d(**plain_kwargs, dtype=torch.float64)
        plain.load_state_dict(layer.state_dict(), strict=True)
        torch.testing.assert_close(layer(x), plain(x))
        return
    d_mul = layer.D_mul
    assert layer.D.shape == (case['in_channels'], kernel_numel, d_mul)
    d_full = layer.D.detach() + identity_part(kernel_numel, d_mul)
    w = layer.weight.detach().reshape(layer.out_channels, -1, d_mul)
    expected = feature_composition(
        x, d_full, w, layer.bias, kernel_size=layer.kernel_size,
        stride=layer.stride, padding=case['padding'],
        dilation=layer.dilation, groups=layer.groups,
        padding_mode=layer.padding_mode)
    torch.testing.assert_close(layer(x), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.fold()(x), expected, rtol=1e-9,
                               atol=1e-9)


@pytest.mark.parametrize('groups,in_channels,out_channels', [(1, 4, 6),
                                                             (2, 4, 6),
                                                             (4, 4, 4),
                                                             (4, 4, 8)])
def test_each_input_channel_owns_its_d(groups, in_channels, out_channels):
    """Changing D of input channel c changes only outputs that read c.

    A public reference implementation reshapes W so that for
    1 < groups < C_in the D matrices land on the wrong input channels.
    """
    layer = DOConv2d(in_channels, out_channels, 3, groups=groups,
                     dtype=torch.float64)
    x = torch.randn(1, in_channels, 6, 6, dtype=torch.float64)
    before = layer(x)
    in_per_group = in_channels // groups
    out_per_group = out_channels // groups
    for channel in range(in_channels):
        with torch.no_grad():
            layer.D.zero_()
            layer.D[channel] = torch.randn(9, 9, dtype=torch.float64)
        changed = (layer(x) - before).abs().amax(dim=(0, 2, 3)) > 0
        group = channel // in_per_group
        expected = torch.zeros(out_channels, dtype=torch.bool)
        expected[group * out_per_group:(group + 1) * out_per_group] = True
        assert changed.tolist() == expected.tolist(), channel


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(stride=2, padding=1),
    dict(dilation=2, padding=2),
    dict(groups=2),
    dict(groups=4),
    dict(padding='same', padding_mode='reflect'),
    dict(bias=False),
])
def test_fresh_layer_is_the_plain_conv(kwargs):
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 8, 3, **kwargs)
    layer = DOConv2d(4, 8, 3, **kwargs)
    layer.load_state_dict(plain.state_dict(), strict=True)
    assert torch.count_nonzero(layer.D) == 0
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(layer(x), plain(x))


def test_fresh_layer_initialises_d_to_zero_and_w_like_conv():
    torch.manual_seed(0)
    layer = DOConv2d(64, 64, 3)
    assert torch.count_nonzero(layer.D) == 0
    # nn.Conv2d's kaiming_uniform(a=sqrt(5)) bound is 1/sqrt(fan_in).
    bound = 1 / (64 * 9)**0.5
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.9 * bound


@pytest.mark.parametrize('d_mul', [9, 16, 25, 36])
def test_d_mul_layouts(d_mul):
    layer = DOConv2d(4, 6, 3, D_mul=d_mul)
    assert layer.D.shape == (4, 9, d_mul)
    expected_weight = (6, 4, 3, 3) if d_mul == 9 else (6, 4, 1, d_mul)
    assert tuple(layer.weight.shape) == expected_weight
    keys = set(layer.state_dict())
    assert keys == ({'weight', 'bias', 'D'} if d_mul == 9 else
                    {'weight', 'bias', 'D', 'kernel_hw'})
    assert f'D_mul={d_mul}' in repr(layer)


def test_identity_is_neither_state_nor_parameter():
    layer = DOConv2d(4, 6, 3, D_mul=20)
    assert {name for name, _ in layer.named_parameters()} == {
        'weight', 'bias', 'D'}
    # The identity part for D_mul = 20 is [I I 0] (paper §4.5), not eye(9, 20).
    identity = doconv_identity(9, 20)
    assert torch.equal(layer._identity, identity)
    assert torch.equal(identity[:, 9:18], torch.eye(9))
    state = layer.state_dict()
    assert not any(torch.equal(t, identity) for t in state.values())
    assert torch.equal(state['D'], torch.zeros(4, 9, 20))  # D - I at init


def test_gradcheck_input_d_and_w():
    torch.manual_seed(0)
    for kwargs in (dict(groups=1), dict(groups=2, D_mul=11),
                   dict(groups=4, stride=2, padding=1, dilation=1)):
        layer = DOConv2d(4, 4, (3, 2), padding=1, dtype=torch.float64,
                         **{k: v for k, v in kwargs.items() if k != 'padding'})
        _perturb(layer, 1)
        x = torch.randn(1, 4, 5, 5, dtype=torch.float64, requires_grad=True)

        def fn(x, weight, d):
            return nn.Conv2d._conv_forward(
                layer, x, _compose(layer, weight, d), layer.bias)

        assert torch.autograd.gradcheck(
            fn, (x, layer.weight, layer.D), eps=1e-6, atol=1e-5)


def _compose(layer, weight, d):
    from mmdoconv.cnn.compose import compose_kernel
    return compose_kernel(weight, d, layer._identity, layer.kernel_size,
                          layer.groups)


def test_gradcheck_through_forward():
    """gradcheck the module itself (parameters as leaves via forward)."""
    torch.manual_seed(0)
    layer = DOConv2d(2, 3, 3, padding=1, dtype=torch.float64)
    _perturb(layer, 2)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x, ), eps=1e-6, atol=1e-5)
    out = layer(x).square().sum()
    out.backward()
    assert layer.D.grad is not None and layer.D.grad.abs().sum() > 0
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


class _CountingCompose:

    def __init__(self, layer):
        self.calls = 0
        self._inner = layer._compose

    def __call__(self, weight):
        self.calls += 1
        return self._inner(weight)


def test_eval_without_grad_composes_once_until_parameters_change():
    # recompute_kernel=False: the forwards with grad compose through
    # layer._compose, which the counter sees.
    layer = DOConv2d(4, 4, 3, padding=1, recompute_kernel=False)
    counter = _CountingCompose(layer)
    layer._compose = counter
    x = torch.randn(1, 4, 5, 5)
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        layer(x)
        layer(x)
    assert counter.calls == 1
    with torch.no_grad():
        layer.D.add_(0.1)  # an optimizer step is an in-place update too
        changed = layer(x)
    assert counter.calls == 2
    assert not torch.equal(first, changed)
    with torch.inference_mode():
        layer(x)
    with torch.no_grad():
        layer(x)
    assert counter.calls == 2
    layer.train()
    layer(x)
    assert counter.calls == 3
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert counter.calls == 4
    layer(x)  # eval with grad enabled: must compose for autograd
    assert counter.calls == 5


def test_cache_follows_load_state_dict():
    layer = DOConv2d(4, 4, 3, padding=1).eval()
    x = torch.randn(1, 4, 5, 5)
    other = DOConv2d(4, 4, 3, padding=1).eval()
    with torch.no_grad():
        other.D.normal_()
        layer(x)
        layer.load_state_dict(other.state_dict())
        assert torch.equal(layer(x), other(x))


def test_cache_follows_ema_style_data_swaps():
    """EMAHook swaps with p.data.copy_ (no version bump), then ValLoop
    calls model.eval(): the kernel must follow the swapped-in weights."""
    layer = DOConv2d(4, 4, 3, padding=1)
    averaged = DOConv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        averaged.D.normal_()
    x = torch.randn(1, 4, 5, 5)
    layer.eval()
    with torch.no_grad():
        layer(x)  # cache the live weights
        for live, avg in zip(layer.parameters(), averaged.parameters()):
            live.data.copy_(avg.data)
        layer.eval()
        torch.testing.assert_close(layer(x), averaged.eval()(x))


@pytest.mark.parametrize('recompute_kernel', [True, False])
@pytest.mark.parametrize('input_needs_grad', [True, False])
def test_autocast_composes_in_float32(monkeypatch, recompute_kernel,
                                      input_needs_grad):
    layer = DOConv2d(4, 4, 3, padding=1, recompute_kernel=recompute_kernel)
    with torch.no_grad():
        layer.D.normal_()
    seen = []

    def spy(function):
        def composing(*args, **kwargs):
            kernel = function(*args, **kwargs)
            seen.append(kernel.dtype)
            return kernel
        return composing

    # Every place that composes: the layer (W' kept) and RecomposingConv2d
    # (its forward, and its backward's fused or pure-PyTorch recomposition).
    for module, name in ((doconv_module, 'compose_kernel'),
                         (recomposing_module, 'compose_kernel'),
                         (recomposing_module, 'compose_rows')):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    x = torch.randn(1, 4, 5, 5, requires_grad=input_needs_grad)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    # One composition in the forward, one more in the backward if recomposed
    # (not for an input without gradient: grad W' does not read W').
    recomposed = recompute_kernel and input_needs_grad
    assert seen == [torch.float32] * (2 if recomposed else 1)
    assert out.dtype == torch.bfloat16
    assert layer.weight.grad.dtype == layer.D.grad.dtype == torch.float32
    assert layer.D.grad.abs().sum() > 0
    if input_needs_grad:
        assert x.grad.dtype == torch.float32


def test_pointwise_is_plain():
    layer = DOConv2d(4, 8, 1, D_mul=16)
    assert layer.D is None
    assert set(layer.state_dict()) == {'weight', 'bias'}
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(
        layer(x), nn.functional.conv2d(x, layer.weight, layer.bias))


def test_switch_to_deploy_is_idempotent_and_plain():
    torch.manual_seed(0)
    layer = DOConv2d(4, 6, 3, padding=1, D_mul=12)
    with torch.no_grad():
        layer.D.normal_()
    x = torch.randn(2, 4, 7, 7)
    expected = layer(x)
    layer.switch_to_deploy()
    layer.switch_to_deploy()
    assert layer.D is None and layer.weight.shape == (6, 4, 3, 3)
    assert 'folded' in repr(layer)
    torch.testing.assert_close(layer(x), expected)
    plain = nn.Conv2d(4, 6, 3, padding=1)
    plain.load_state_dict(layer.state_dict(), strict=True)
    torch.testing.assert_close(plain(x), expected)


def test_plain_checkpoint_loads_strict_into_larger_d_mul():
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 6, 3, padding=1)
    layer = DOConv2d(4, 6, 3, padding=1, D_mul=20)
    layer.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(layer(x), plain(x))


def test_fold_keeps_hyper_parameters_and_flags():
    layer = DOConv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2),
                     dilation=(1, 2), groups=2, bias=True,
                     padding_mode='circular', dtype=torch.float64)
    layer.weight.requires_grad_(False)
    layer.eval()
    plain = layer.fold()
    assert type(plain) is nn.Conv2d
    for attr in ('in_channels', 'out_channels', 'kernel_size', 'stride',
                 'padding', 'dilation', 'groups', 'padding_mode'):
        assert getattr(plain, attr) == getattr(layer, attr), attr
    assert plain.weight.dtype == torch.float64
    assert not plain.weight.requires_grad and plain.bias.requires_grad
    assert not plain.training


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(kernel_size=3, D_mul=8), ValueError,
     r'D_mul must be >= M\*N = 9 for a 3x3 kernel, but got 8'),
    (dict(kernel_size=(2, 3), D_mul=5), ValueError,
     r'M\*N = 6 for a 2x3 kernel, but got 5'),
    (dict(kernel_size=3, D_mul=9.5), TypeError, 'D_mul must be an int'),
    (dict(kernel_size=3, D_mul=True), TypeError, 'D_mul must be an int'),
    (dict(kernel_size=0), ValueError, 'kernel_size must be a positive'),
    (dict(kernel_size=3, stride=0), ValueError, 'stride must be a positive'),
    (dict(kernel_size=3, dilation=(1, -1)), ValueError,
     r'dilation must be .* got \(1, -1\)'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DOConv2d(4, 8, **kwargs)


@pytest.mark.parametrize('in_channels,out_channels', [(0, 8), (4, -1)])
def test_bad_channels(in_channels, out_channels):
    with pytest.raises(ValueError, match='channels must be a positive int'):
        DOConv2d(in_channels, out_channels, 3)


@pytest.mark.parametrize('rule,kernel,expected', [
    ('M*N', 3, 9), ('(M+2)*(N+2)', 3, 25), ('(2M)*(2N)', 3, 36),
    ('(M+2)*(N+2)', 7, 81), ('(2M)*(2N)', (1, 3), 12),
    ('MxN', 3, 9), ('M+2xN+2', 3, 25), ('2Mx2N', 3, 36), ('M+2xN+2', (1, 3),
                                                          15),
])
def test_d_mul_rules_of_table_8(rule, kernel, expected):
    layer = DOConv2d(4, 4, kernel, D_mul=rule)
    assert layer.D_mul == expected


def test_unknown_d_mul_rule():
    with pytest.raises(ValueError, match=r"D_mul rule .* got '3M'"):
        DOConv2d(4, 4, 3, D_mul='3M')


def test_random_d_init_of_table_7():
    torch.manual_seed(0)
    layer = DOConv2d(64, 64, 3, D_init='random')
    d_full = layer.D.detach() + torch.eye(9)
    # He-normal with fan-in M*N: std sqrt(2/9).
    assert d_full.std().item() == pytest.approx((2 / 9)**0.5, rel=0.05)
    assert d_full.mean().abs().item() < 0.02
    assert 'D_init=random' in repr(layer)
    with pytest.raises(ValueError, match="D_init must be one of .* 'he'"):
        DOConv2d(4, 4, 3, D_init='he')


def _readme_ablation_options():
    """The --cfg-options of the docs' ablation table, as written."""
    import os.path as osp
    import re
    readme = open(osp.join(osp.dirname(__file__), '..', 'docs', 'en',
                           'user_guides', 'paper_experiments.md')).read()
    rows = [line for line in readme.splitlines()
            if line.startswith(('| Table 8, D_mul', '| Table 7, init of D'))]
    assert len(rows) == 2
    return re.findall(r'`(?:--cfg-options )?(model\.backbone\.conv_cfg\.'
                      r'(?:D_mul|D_init)=[^`]+)`', '\n'.join(rows)) + [
                          f'model.backbone.conv_cfg.D_mul={rule}'
                          for rule in re.findall(r'`(M\+2xN\+2|2Mx2N)`',
                                                 rows[0])] + [
                          f'model.backbone.conv_cfg.D_init={init}'
                          for init in re.findall(r'`(random)`', rows[1])]


def test_readme_ablation_knobs_survive_the_command_line():
    """mmengine's DictAction read '(M+2)*(N+2)' as a tuple; the docs'
    command-line names must reach DOConv2d as the rule they name."""
    import argparse
    from mmengine.config import DictAction
    options = _readme_ablation_options()
    assert len(options) >= 5, options
    seen = set()
    for option in options:
        parser = argparse.ArgumentParser()
        parser.add_argument('--cfg-options', nargs='+', action=DictAction)
        parsed = parser.parse_args(['--cfg-options', option]).cfg_options
        (key, value), = parsed.items()
        name = key.rsplit('.', 1)[1]
        layer = DOConv2d(4, 4, 3, **{name: value})
        seen.add((name, layer.D_mul if name == 'D_mul' else layer.D_init))
    assert {('D_mul', 9), ('D_mul', 25), ('D_mul', 36), ('D_init', 'identity'),
            ('D_init', 'random')} <= seen
