"""DO-Conv for 1-D, 3-D and transposed convs (issue 27).

Every layer is checked against the composition written out per kind with
einsum (not the code under test), with non-zero D, in both training paths
(recomposing backward and kept W'), and folds to the plain ``nn`` layer.
"""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mmdoconv import (DOConv1d, DOConv3d, DOConvTranspose1d,
                      DOConvTranspose2d, DOConvTranspose3d,
                      IncompatibleCheckpointError, convert_to_doconv,
                      fold_doconv, fold_state_dict)
from mmdoconv.cnn.doconv_nd import resolve_d_mul_nd

#: (layer class, positional args, keyword args, input shape).
CASES = [
    (DOConv1d, (4, 6, 3), dict(padding=1), (2, 4, 10)),
    (DOConv1d, (4, 8, 5), dict(groups=2, padding='same', D_mul=7),
     (2, 4, 10)),
    (DOConv1d, (4, 4, 3), dict(groups=4, padding=1, padding_mode='reflect'),
     (2, 4, 10)),
    (DOConv3d, (3, 4, 3), dict(padding=1), (1, 3, 5, 6, 6)),
    (DOConv3d, (4, 4, (1, 3, 3)),
     dict(groups=2, stride=(1, 2, 2), D_mul='M+2xN+2'), (1, 4, 4, 7, 7)),
    (DOConvTranspose1d, (4, 6, 4), dict(stride=2, padding=1), (2, 4, 9)),
    (DOConvTranspose2d, (4, 6, 2), dict(stride=2), (2, 4, 5, 5)),
    (DOConvTranspose2d, (4, 6, 3),
     dict(stride=2, padding=1, output_padding=1, groups=2, D_mul=12),
     (2, 4, 5, 5)),
    (DOConvTranspose3d, (4, 2, 3), dict(stride=2, padding=1, dilation=2),
     (1, 4, 3, 4, 4)),
]
IDS = [f'{c.__name__}-{i}' for i, (c, *_) in enumerate(CASES)]


def definition_kernel(layer) -> torch.Tensor:
    """W' written out from the paper's Eq. 3 for each kind: per input
    channel ``c``, ``W'[., c, s] = sum_d D[c, s, d] W[., c, d]``; a
    transposed conv's weight is ``(C_in, C_out/groups, ...)``."""
    weight = layer.weight.reshape(*layer.weight.shape[:2], -1)
    d_full = layer.D + layer._identity
    if layer.transposed:
        kernel = torch.einsum('iod,isd->ios', weight, d_full)
    else:
        groups, (out, in_per_group) = layer.groups, weight.shape[:2]
        kernel = torch.einsum(
            'gocd,gcsd->gocs',
            weight.reshape(groups, out // groups, in_per_group, -1),
            d_full.reshape(groups, in_per_group, d_full.shape[1], -1))
    return kernel.reshape(*layer.weight.shape[:2], *layer.kernel_size)


def _layer(case, recompute_kernel=True, seed=0):
    cls, args, kwargs, shape = case
    torch.manual_seed(seed)
    layer = cls(*args, **kwargs, recompute_kernel=recompute_kernel).double()
    with torch.no_grad():
        layer.D.normal_(0, 0.3)  # non-zero D: D = I would prove nothing
    return layer, torch.randn(*shape, dtype=torch.double, requires_grad=True)


def _with_kernel(plain, kernel):
    plain = copy.deepcopy(plain)
    with torch.no_grad():
        plain.weight.copy_(kernel)
    return plain


@pytest.mark.parametrize('case', CASES, ids=IDS)
@pytest.mark.parametrize('recompute_kernel', [True, False])
def test_matches_the_definition_and_folds(case, recompute_kernel):
    """Forward = the plain conv with the definition's W'; grads of both
    training paths agree; fold gives the nn class computing the same."""
    layer, x = _layer(case, recompute_kernel)
    out = layer(x)
    plain = layer.fold()
    assert type(plain) is layer.plain_base and not hasattr(plain, 'D')
    expected = _with_kernel(plain, definition_kernel(layer))(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(plain(x), expected)
    identity_d = copy.deepcopy(layer)
    with torch.no_grad():
        identity_d.D.zero_()
        assert (identity_d(x) - out).abs().max() > 0.1  # D matters
    grad = torch.randn_like(out)
    params = [x, layer.weight, layer.D, layer.bias]
    grads = torch.autograd.grad(out, params, grad)
    other = copy.deepcopy(layer)
    other.recompute_kernel = not recompute_kernel
    other_params = [x, other.weight, other.D, other.bias]
    other_grads = torch.autograd.grad(other(x), other_params, grad)
    for got, want in zip(grads, other_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_gradcheck_of_the_recomposing_path(case):
    """Input, W and D gradients of the recomposing backward against finite
    differences (float64), and its double backward."""
    layer, x = _layer(case)
    weight = layer.weight.detach().clone().requires_grad_()
    d = layer.D.detach().clone().requires_grad_()

    def run(x, weight, d):
        return functional_call(layer, {'weight': weight, 'D': d}, (x, ))

    assert torch.autograd.gradcheck(run, (x, weight, d))
    assert torch.autograd.gradgradcheck(run, (x, weight, d))


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_identity_d_is_the_plain_conv(case):
    """A converted plain conv computes exactly what it computed."""
    cls, args, kwargs, shape = case
    torch.manual_seed(1)
    plain = cls.plain_base(*args, **{k: v for k, v in kwargs.items()
                                     if k != 'D_mul'})
    model = nn.Sequential(plain)
    x = torch.randn(*shape)
    expected = model(x)
    report = convert_to_doconv(model, D_mul=kwargs.get('D_mul'))
    assert report.converted == ['0'] and isinstance(model[0], cls)
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_fold_state_dict_loads_strictly_into_the_plain_model(case):
    """A state dict folds without the model (kernel_shape and
    transposed_kernel tell the kinds apart) and loads strictly."""
    layer, x = _layer(case)
    model = nn.Sequential(layer, nn.Identity())
    folded = fold_state_dict(model.state_dict())
    assert set(folded) == {'0.weight', '0.bias'}
    plain = nn.Sequential(layer.fold(), nn.Identity())
    plain.load_state_dict(folded, strict=True)
    torch.testing.assert_close(plain(x), model(x))
    # In place on the model too.
    assert fold_doconv(model) == 1 and type(model[0]) is layer.plain_base
    torch.testing.assert_close(model(x), plain(x))


def test_transposed_and_plain_entries_of_the_same_shapes_fold_apart():
    """W (4, 4, 3, 3) and D (4, 9, 9) fit a plain and a transposed conv;
    their compositions differ (mutation: ignoring transposed_kernel in
    fold_state_dict fails)."""
    torch.manual_seed(0)
    transposed = DOConvTranspose2d(4, 4, 3).double()
    with torch.no_grad():
        transposed.D.normal_(0, 0.3)
    state = transposed.state_dict()
    folded = fold_state_dict(state)['weight']
    torch.testing.assert_close(folded, definition_kernel(transposed))
    as_plain_conv = {k: v for k, v in state.items()
                     if k != 'transposed_kernel'}
    assert (fold_state_dict(as_plain_conv)['weight'] - folded).abs().max() \
        > 0.1


def test_plain_checkpoints_load_with_identity_d():
    """A plain conv's state dict loads into the layer (D = I; W padded for
    D_mul > K), strict, and a D of another shape is refused by name."""
    torch.manual_seed(0)
    plain = nn.ConvTranspose3d(3, 4, (1, 3, 3), stride=2)
    x = torch.randn(1, 3, 2, 4, 4)
    for d_mul in (None, 12):
        layer = DOConvTranspose3d(3, 4, (1, 3, 3), stride=2, D_mul=d_mul)
        with torch.no_grad():
            layer.D.normal_()
        layer.load_state_dict(plain.state_dict(), strict=True)
        assert not layer.D.any()
        torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-5)
    other = DOConvTranspose3d(3, 4, (1, 3, 3), D_mul=12).state_dict()
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"D: the checkpoint's D has shape \(3, 9, 12\) "
                       r'but this layer\'s is \(3, 9, 9\)'):
        DOConvTranspose3d(3, 4, (1, 3, 3)).load_state_dict(other)


def test_unfolded_checkpoint_loads_folded_into_plain_convs(tmp_path):
    """mmengine's load_checkpoint folds the D of layers that are plain
    convs in the model being loaded, for every kind."""
    from mmengine.runner import load_checkpoint
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ConvTranspose1d(4, 4, 2))
    plain = copy.deepcopy(model)
    convert_to_doconv(model)
    with torch.no_grad():
        for layer in model:
            layer.D.normal_(0, 0.3)
    x = torch.randn(2, 3, 8)
    path = tmp_path / 'unfolded.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    load_checkpoint(plain, str(path), strict=True)
    torch.testing.assert_close(plain(x), model(x))


def test_d_mul_rules_apply_per_extent():
    assert resolve_d_mul_nd(None, (3, 3, 3)) == 27
    assert resolve_d_mul_nd('M+2xN+2', (3, )) == 5
    assert resolve_d_mul_nd('(M+2)*(N+2)', (1, 3, 3)) == 3 * 5 * 5
    assert resolve_d_mul_nd('2Mx2N', (2, 2)) == 16
    with pytest.raises(ValueError, match=r'D_mul must be >= K = 27 .*3x3x3'
                       r'.*but got 20'):
        DOConv3d(2, 2, 3, D_mul=20)


def test_autocast_matches_the_folded_plain_conv():
    """Under CPU bf16 autocast the composition runs in float32 and the conv
    in bf16, as the folded plain conv does."""
    torch.manual_seed(0)
    layer = DOConvTranspose2d(8, 8, 3, stride=2)
    with torch.no_grad():
        layer.D.normal_(0, 0.3)
    plain = layer.fold()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, expected = layer(x), plain(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)
    out.float().sum().backward()
    assert layer.D.grad.dtype == torch.float32 and x.grad.dtype == x.dtype


def test_registered_as_mmcv_layer_types():
    from mmcv.cnn import build_conv_layer, build_upsample_layer
    layer = build_conv_layer(dict(type='DOConv1d', D_mul=5), 2, 4, 3)
    assert type(layer) is DOConv1d and layer.D_mul == 5
    assert type(build_conv_layer(dict(type='DOConv3d'), 2, 4, 3)) is DOConv3d
    upsample = build_upsample_layer(dict(type='DOConvTranspose2d'),
                                    in_channels=4, out_channels=4,
                                    kernel_size=2, stride=2)
    assert type(upsample) is DOConvTranspose2d
    # Pointwise: nothing to over-parameterize, D is None, a plain layer.
    assert build_conv_layer(dict(type='DOConv1d'), 2, 4, 1).D is None


def test_onnx_export_is_the_plain_graph(tmp_path):
    """Folded, a model of the new kinds exports the plain model's graph;
    unfolded, it traces too (the composition in the graph)."""
    import onnxruntime
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1))
    plain = copy.deepcopy(model)
    convert_to_doconv(model)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.D.normal_(0, 0.3)
    x = torch.randn(2, 3, 16)
    expected = model(x).detach()

    def export(module, name):
        path = str(tmp_path / name)
        torch.onnx.export(module.eval(), (x, ), path, dynamo=False,
                          input_names=['x'], opset_version=17)
        import onnx
        ops = sorted(node.op_type for node in onnx.load(path).graph.node)
        session = onnxruntime.InferenceSession(path)
        return ops, session.run(None, {'x': x.numpy()})[0]

    unfolded_ops, unfolded_out = export(model, 'unfolded.onnx')
    torch.testing.assert_close(torch.from_numpy(unfolded_out), expected,
                               rtol=1e-4, atol=1e-4)
    fold_doconv(model)
    folded_ops, folded_out = export(model, 'folded.onnx')
    plain_ops, _ = export(plain, 'plain.onnx')
    assert folded_ops == plain_ops == ['Conv', 'ConvTranspose', 'Relu']
    torch.testing.assert_close(torch.from_numpy(folded_out), expected,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', ['r3d_18', 'r2plus1d_18', 'mc3_18'])
def test_torchvision_video_models_convert_and_fold_exactly(name):
    """Other people's 3-D CNNs: every non-pointwise Conv3d converts, a
    training step reaches every D, and the folded model is the plain one."""
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models.video, name)(num_classes=5)
    plain = copy.deepcopy(model)
    report = convert_to_doconv(model)
    convs = [n for n, m in plain.named_modules()
             if isinstance(m, nn.Conv3d) and m.kernel_size != (1, 1, 1)]
    assert report.converted == convs and len(convs) >= 10
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DOConv3d):
                module.D.normal_(0, 0.05)
    x = torch.randn(2, 3, 8, 32, 32)
    model.train()
    model(x).logsumexp(1).sum().backward()
    assert all(model.get_submodule(n).D.grad.abs().max() > 0 for n in convs)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        fold_doconv(model)
        assert torch.equal(model(x), expected)
        plain.load_state_dict(model.state_dict(), strict=True)
        assert torch.equal(plain.eval()(x), expected)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_fx_symbolic_trace_records_the_composition(case):
    """torch.fx (mmengine's and mmcv's conv-BN tracers) records the
    composition as one call and the traced module computes the same
    (mutation: no torch.fx.wrap fails: the autocast check reads a proxy)."""
    layer, x = _layer(case)
    module = nn.Sequential(layer).eval()
    graph = torch.fx.symbolic_trace(module)
    assert 'compose_any_weight' in graph.code
    with torch.no_grad():
        torch.testing.assert_close(graph(x), module(x))


@pytest.mark.parametrize('field, value, message', [
    ('kernel_shape', torch.tensor([3.0, 3.0]), 'integer tensor of 1 to 3'),
    ('kernel_shape', torch.tensor([3, -3]), 'positive extents'),
    ('kernel_shape', torch.tensor([10**6, 10**6]), 'inconsistent DO-Conv'),
    ('kernel_shape', 'x' * 10, "got str 'xxxxxxxxxx'"),
    ('transposed_kernel', torch.ones(5), 'one-element tensor'),
    ('D', torch.ones(4, 9, 9, dtype=torch.float64), "D's dtype and device"),
])
def test_malformed_entries_are_refused_by_name(field, value, message):
    """A crafted or damaged state dict gives one ValueError naming the key,
    before anything is composed."""
    state = dict(DOConvTranspose2d(4, 4, 3).state_dict())
    state[field] = value
    with pytest.raises(ValueError, match=message):
        fold_state_dict(state)
