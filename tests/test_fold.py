"""fold_doconv / fold_state_dict against the unfolded model and plain convs."""
import numpy as np
import pytest
import torch
from torch import nn

from mmdoconv import DOConv2d, count_doconv, fold_doconv, fold_state_dict


def _net(conv=DOConv2d, **extra):
    """Every conv variant in one small model; conv is DOConv2d or nn.Conv2d."""

    def make(*args, d_mul=None, **kwargs):
        if conv is DOConv2d:
            kwargs['D_mul'] = d_mul
        return conv(*args, **kwargs)

    return nn.Sequential(
        make(3, 8, 3, padding=1),
        nn.ReLU(),
        make(8, 8, 3, padding=2, dilation=2, groups=8),  # DO-DConv
        make(8, 12, (3, 5), stride=(2, 1), padding=(1, 2), groups=4,
             d_mul=20),  # DO-GConv, non-square, D_mul > M*N
        nn.Sequential(
            make(12, 12, 3, padding='same', padding_mode='reflect',
                 bias=False),
            make(12, 6, 1),  # pointwise: a plain conv
        ),
        make(6, 4, 5, padding=2, padding_mode='circular', d_mul=36),
    )


def _perturbed_doconv_net():
    torch.manual_seed(0)
    net = _net()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, DOConv2d) and module.D is not None:
                module.D.normal_(std=0.3)
    return net.eval()


def test_fold_doconv_equals_unfolded_and_is_plain():
    net = _perturbed_doconv_net()
    x = torch.randn(2, 3, 12, 14)
    with torch.no_grad():
        expected = net(x)
        assert count_doconv(net) == 5
        assert fold_doconv(net) == 6
        assert count_doconv(net) == 0
        assert not any(isinstance(m, DOConv2d) for m in net.modules())
        assert sum(type(m) is nn.Conv2d for m in net.modules()) == 6
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
        assert fold_doconv(net) == 0  # idempotent


def test_folded_state_dict_loads_strict_into_plain_model():
    net = _perturbed_doconv_net()
    x = torch.randn(2, 3, 12, 14)
    with torch.no_grad():
        expected = net(x)
    fold_doconv(net)
    plain = _net(conv=nn.Conv2d).eval()
    plain.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_state_dict_matches_fold_doconv():
    net = _perturbed_doconv_net()
    state_dict = net.state_dict()
    keys_before = list(state_dict)
    folded = fold_state_dict(state_dict)
    assert list(state_dict) == keys_before  # input untouched
    fold_doconv(net)
    reference = net.state_dict()
    assert list(folded) == list(reference)
    for key in reference:
        torch.testing.assert_close(folded[key], reference[key])
    plain = _net(conv=nn.Conv2d)
    plain.load_state_dict(folded, strict=True)
    # A folded state dict has nothing left to fold.
    again = fold_state_dict(folded)
    assert all(torch.equal(again[k], folded[k]) for k in folded)


def test_fold_state_dict_needs_the_kernel_record_for_3d_weights():
    net = _perturbed_doconv_net()
    state_dict = net.state_dict()
    del state_dict['3.kernel_hw']
    with pytest.raises(ValueError, match=r"3\.kernel_hw.*missing"):
        fold_state_dict(state_dict)


def test_fold_state_dict_rejects_inconsistent_shapes():
    state_dict = _perturbed_doconv_net().state_dict()
    state_dict['0.D'] = torch.zeros(3, 9, 8)
    with pytest.raises(ValueError, match="inconsistent DO-Conv entry '0'"):
        fold_state_dict(state_dict)


def test_fold_doconv_refuses_a_bare_layer():
    with pytest.raises(TypeError, match='call DOConv2d.fold'):
        fold_doconv(DOConv2d(2, 2, 3))


def test_fold_keeps_device_dtype_and_training_flags():
    net = _net().double().train()
    fold_doconv(net)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            assert module.weight.dtype == torch.float64
            assert module.training
            assert module.weight.requires_grad


def test_kernel_change_map_is_the_papers_h():
    """H_mn = sum_i |W'_imn - W_imn| (paper §4.4), also for tiny D."""
    from mmdoconv.utils.kernel_maps import kernel_change_maps
    torch.manual_seed(0)
    net = nn.Sequential(DOConv2d(3, 4, 3), DOConv2d(4, 4, 3))
    with torch.no_grad():
        net[0].D.normal_(std=0.1)
        net[1].D.normal_(std=1e-9)  # W' - W rounds to 0 in float32
    maps = kernel_change_maps(net.double())
    layer = net[0]
    with torch.no_grad():
        expected = (layer.fold().weight - layer.weight).abs().sum(dim=(0, 1))
    assert maps.keys() == {'0', '1'}
    np.testing.assert_allclose(maps['0'], expected.numpy(), rtol=1e-6)
    assert maps['1'].max() > 0
