"""Converting state dicts of the public reference DOConv2d."""
import math
import os.path as osp

import pytest
import torch
from torch import nn
from torch.nn import Parameter

from mmdoconv import DOConv2d, convert_reference_state_dict
from toy import ToyNet, toy_runner


class ReferenceDOConv2d(nn.Conv2d):
    """The public reference layer's parameters and forward, as published.

    Kept here only to produce state dicts in its layout (``W``, ``D``,
    ``d_diag``) and its outputs, including its reshape of ``W`` to
    ``(C_out // groups, C_in, D_mul)``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, D_mul=None,
                 **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        del self.weight
        m, n = self.kernel_size
        self.D_mul = m * n if D_mul is None or m * n <= 1 else D_mul
        self.W = Parameter(torch.empty(out_channels,
                                       in_channels // self.groups, self.D_mul))
        nn.init.kaiming_uniform_(self.W, a=math.sqrt(5))
        if m * n > 1:
            self.D = Parameter(torch.zeros(in_channels, m * n, self.D_mul))
            eye = torch.eye(m * n).reshape(1, m * n, m * n)
            d_diag = eye.repeat((in_channels, 1, self.D_mul // (m * n)))
            if self.D_mul % (m * n):
                d_diag = torch.cat([d_diag, torch.zeros(
                    in_channels, m * n, self.D_mul % (m * n))], dim=2)
            self.d_diag = Parameter(d_diag, requires_grad=False)

    def forward(self, x):
        m, n = self.kernel_size
        shape = (self.out_channels, self.in_channels // self.groups, m, n)
        if m * n > 1:
            d = self.D + self.d_diag
            w = self.W.reshape(self.out_channels // self.groups,
                               self.in_channels, self.D_mul)
            kernel = torch.einsum('ims,ois->oim', d, w).reshape(shape)
        else:
            kernel = self.W.reshape(shape)
        return self._conv_forward(x, kernel, self.bias)


@pytest.mark.parametrize('kwargs,exact_layout', [
    (dict(in_channels=4, out_channels=6), True),
    (dict(in_channels=4, out_channels=6, D_mul=13), True),
    (dict(in_channels=6, out_channels=6, groups=6), True),  # depthwise
    (dict(in_channels=4, out_channels=8, groups=4), False),  # multiplier 2
    (dict(in_channels=4, out_channels=6, groups=2, D_mul=10), False),
    (dict(in_channels=4, out_channels=6, kernel_size=1), True),
])
def test_converted_layer_computes_what_the_reference_computed(
        kwargs, exact_layout):
    torch.manual_seed(0)
    kwargs.setdefault('kernel_size', 3)
    reference = ReferenceDOConv2d(padding=1, **kwargs)
    with torch.no_grad():
        if hasattr(reference, 'D'):
            reference.D.normal_(std=0.2)
    state_dict = {f'layer.{k}': v for k, v in reference.state_dict().items()}
    if exact_layout:
        converted = convert_reference_state_dict(state_dict)
    else:
        with pytest.warns(UserWarning, match='pairs output channels'):
            converted = convert_reference_state_dict(state_dict)
    ours = DOConv2d(padding=1, **kwargs)
    ours.load_state_dict(
        {k[len('layer.'):]: v for k, v in converted.items()}, strict=True)
    if exact_layout and ours.D is not None:
        assert torch.equal(ours.D, reference.D)  # D carried over, not folded
    x = torch.randn(2, kwargs['in_channels'], 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5,
                                   atol=1e-5)


def test_non_square_kernels_need_their_size():
    reference = ReferenceDOConv2d(4, 4, (2, 3))
    with pytest.raises(ValueError, match=r"'conv'.*M\*N = 6.*kernel_sizes"):
        convert_reference_state_dict(
            {f'conv.{k}': v for k, v in reference.state_dict().items()})
    converted = convert_reference_state_dict(
        {f'conv.{k}': v for k, v in reference.state_dict().items()},
        kernel_sizes={'conv': (2, 3)})
    assert converted['conv.weight'].shape == (4, 4, 2, 3)


class ReferenceToyNet(ToyNet):

    def __init__(self):
        super().__init__(conv=ReferenceDOConv2d)


def test_converted_checkpoint_through_runner(tmp_path):
    """A converted reference checkpoint tests in a Runner like the original."""
    torch.manual_seed(0)
    reference = ReferenceToyNet()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, ReferenceDOConv2d):
                module.D.normal_(std=0.2)
    expected = toy_runner(tmp_path / 'ref', model=reference).test()
    path = osp.join(tmp_path, 'converted.pth')
    torch.save({'state_dict': convert_reference_state_dict(
        reference.state_dict())}, path)
    runner = toy_runner(tmp_path / 'ours', load_from=path)
    assert runner.test() == expected
