"""DO-Conv training without keeping W' (``recompute_kernel=True``).

The recomposing path must give the forward and every gradient of the layer
that keeps W' (and of the plain conv folded from it, for the input), with
non-zero D, on every conv variant; and autograd must hold only the layer's
own tensors, never a W'.  On CPU in float32/64 the layer runs the C++
extension's autograd node; :func:`recompose_in_python` runs the Python
``autograd.Function`` instead, and both are tested.
"""
import contextlib
import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmdoconv import DOConv2d
from mmdoconv.cnn.recomposing_conv import recompose_in_python
from mmdoconv.ops.fused_compose import force_backend

CPP_NODE = 'torch::autograd::CppNode<mmdoconv::RecomposingConv2d>'
PYTHON_NODE = 'RecomposingConv2dBackward'


def _glue(name):
    """The C++ node ('cpp', where it applies) or the Python function."""
    return recompose_in_python() if name == 'python' else \
        contextlib.nullcontext()


def _count_compositions(function):
    """How many times the C++ kernels compose W' while ``function`` runs
    (the extension records each call for torch.profiler)."""
    with torch.profiler.profile() as profile:
        function()
    return sum(event.name == 'mmdoconv::compose_forward'
               for event in profile.events())


VARIANTS = [
    dict(),
    dict(groups=4),
    dict(groups=8, stride=2, dilation=2, padding=2),  # depthwise
    dict(D_mul=20, bias=False),
    dict(padding_mode='reflect'),
    dict(padding='valid', kernel_size=(3, 5)),
    dict(padding='same', kernel_size=(3, 5), dilation=(2, 1)),
]


def _layers(**kwargs):
    options = dict(kernel_size=3, padding=1)
    options.update(kwargs)
    torch.manual_seed(0)
    recomposing = DOConv2d(8, 16, **options)
    with torch.no_grad():
        recomposing.D.normal_(0, 0.3)
    keeping = copy.deepcopy(recomposing)
    keeping.recompute_kernel = False
    return recomposing, keeping


def _forward_backward(layer, x, grad):
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    out.backward(grad)
    return out, x.grad


# The C++ node (fused kernels), the Python function with the fused kernels
# and with the pure-PyTorch composition.
@pytest.mark.parametrize('glue,backend,node', [('cpp', None, CPP_NODE),
                                               ('python', None, PYTHON_NODE),
                                               ('cpp', 'torch', PYTHON_NODE)])
@pytest.mark.parametrize('options', VARIANTS)
def test_same_forward_and_gradients_as_keeping_w(options, glue, backend,
                                                 node):
    recomposing, keeping = _layers(**options)
    x = torch.randn(2, 8, 11, 13)
    grad = torch.randn_like(keeping(x))
    with force_backend(backend), _glue(glue):
        out, grad_x = _forward_backward(recomposing, x, grad)
        expected, expected_grad_x = _forward_backward(keeping, x, grad)
    assert out.grad_fn.name() == node
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad_x, expected_grad_x)
    for name in ('weight', 'D', 'bias'):
        mine, theirs = (getattr(layer, name) for layer in (recomposing,
                                                           keeping))
        if mine is None:
            continue
        assert mine.grad is not None and mine.grad.abs().sum() > 0, name
        torch.testing.assert_close(mine.grad, theirs.grad, msg=name)
    # and the input gradient is the folded plain conv's
    plain = recomposing.fold()
    _, plain_grad_x = _forward_backward(plain, x, grad)
    torch.testing.assert_close(grad_x, plain_grad_x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('memory_format',
                         [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('options', VARIANTS)
def test_cpp_node_is_the_python_function_bit_for_bit(options, dtype,
                                                     memory_format):
    """The C++ node runs the Python function's kernels in the same order:
    forward and every gradient (input, W, D, bias) agree exactly, input
    gradient or not, for NCHW and channels-last activations."""
    results = []
    for glue in ('cpp', 'python'):
        layer, _ = _layers(**options)
        layer.to(dtype)
        x = torch.randn(2, 8, 11, 13, dtype=dtype,
                        generator=torch.Generator().manual_seed(1))
        x = x.to(memory_format=memory_format)
        x_with_grad = x.clone().requires_grad_()
        with _glue(glue):
            out = layer(x_with_grad)
            grad = torch.randn(out.shape, dtype=dtype,
                               generator=torch.Generator().manual_seed(2))
            grad = grad.to(memory_format=memory_format)
            out_frozen_input = layer(x)
        assert out.grad_fn.name() == (CPP_NODE if glue == 'cpp'
                                      else PYTHON_NODE)
        out.backward(grad)
        first = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        out_frozen_input.backward(grad)
        second = [p.grad for p in layer.parameters()]
        results.append([out, x_with_grad.grad, *first, *second])
    assert all(t.abs().sum() > 0 for t in results[0])
    for mine, theirs in zip(*results):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize('glue', ['cpp', 'python'])
@pytest.mark.parametrize('options', [dict(), dict(groups=4),
                                     dict(D_mul=20, bias=False)])
def test_input_without_gradient_composes_once(options, glue, monkeypatch):
    """A layer fed a tensor that needs no gradient (a stem, the first layer
    after a frozen stage) gets the W, D and bias gradients of the layer that
    keeps W', and its backward composes nothing: the forward's composition is
    the only one."""
    recomposing, keeping = _layers(**options)
    x = torch.randn(2, 8, 11, 13)
    grad = torch.randn_like(keeping(x))
    outputs = []
    with _glue(glue):
        forward = _count_compositions(lambda: outputs.append(recomposing(x)))
        assert forward == 1
        assert _count_compositions(lambda: outputs[-1].backward(grad)) == 0
        keeping(x).backward(grad)
        expected = {name: getattr(keeping, name).grad
                    for name in ('weight', 'D', 'bias')
                    if getattr(keeping, name) is not None}
        got = {name: getattr(recomposing, name).grad.clone()
               for name in expected}
        # the count sees the backward's recomposition when there is one
        outputs.append(recomposing(x.clone().requires_grad_()))
        assert _count_compositions(lambda: outputs[-1].backward(grad)) == 1
    for name, grad_of_keeping in expected.items():
        assert got[name].abs().sum() > 0, name
        torch.testing.assert_close(got[name], grad_of_keeping, msg=name)


@pytest.mark.parametrize('recompute_kernel', [True, False])
def test_autograd_keeps_no_composed_kernel(recompute_kernel):
    """Every tensor autograd saves is the input or one of the layer's own
    parameters and buffers; with W' kept there is one more (so this test
    can fail)."""
    layer, _ = _layers()
    layer.recompute_kernel = recompute_kernel
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    own = {t.data_ptr() for t in (x, *layer.parameters(), *layer.buffers())}
    foreign = [tuple(t.shape) for t in saved if t.data_ptr() not in own]
    if recompute_kernel:
        assert foreign == []
    else:
        assert (16, 8, 3, 3) in foreign  # W'
    out.sum().backward()


@pytest.mark.parametrize('glue', ['cpp', 'python'])
@pytest.mark.parametrize('options', [dict(groups=1), dict(groups=3),
                                     dict(groups=1, D_mul=11, bias=False)])
def test_gradcheck_and_double_backward_in_float64(options, glue):
    torch.manual_seed(0)
    layer = DOConv2d(3, 3, 3, padding=1, **options).double()
    with torch.no_grad():
        layer.D.normal_(0, 0.3)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)

    def forward(x, weight, d, bias):
        replica = copy.copy(layer)
        replica._parameters = dict(weight=weight, D=d, bias=bias)
        return replica(x)

    inputs = (x, layer.weight, layer.D, layer.bias)
    with _glue(glue):
        assert forward(*inputs).grad_fn.name() == (
            CPP_NODE if glue == 'cpp' else PYTHON_NODE)
        assert torch.autograd.gradcheck(forward, inputs)
        assert torch.autograd.gradgradcheck(forward, inputs)


def test_asymmetric_same_padding_keeps_w():
    """An even kernel extent pads 'same' unevenly: the layer takes
    F.conv2d's own 'same' path (W' kept) and gives the right gradients."""
    recomposing, keeping = _layers(kernel_size=(2, 3), padding='same')
    x = torch.randn(2, 8, 9, 9)
    grad = torch.randn(2, 16, 9, 9)
    out, grad_x = _forward_backward(recomposing, x, grad)
    assert out.grad_fn.name() == 'ConvolutionBackward0'
    torch.testing.assert_close(grad_x, _forward_backward(keeping, x, grad)[1])


@pytest.mark.parametrize('use_reentrant', [True, False])
def test_activation_checkpointing(use_reentrant):
    """mmdet / mmpretrain backbones with ``with_cp=True`` wrap blocks in
    torch.utils.checkpoint: same gradients as without it."""
    recomposing, keeping = _layers()
    block = nn.Sequential(recomposing, nn.ReLU())
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    checkpoint(block, x, use_reentrant=use_reentrant).sum().backward()
    keeping(x.detach()).relu().sum().backward()
    for name in ('weight', 'D', 'bias'):
        torch.testing.assert_close(
            getattr(recomposing, name).grad, getattr(keeping, name).grad)


def test_frozen_layer_still_passes_gradient_to_its_input():
    """A frozen DO-Conv layer (frozen_stages) before trainable ones."""
    recomposing, keeping = _layers()
    for layer in (recomposing, keeping):
        layer.requires_grad_(False)
    x = torch.randn(2, 8, 9, 9)
    grad = torch.randn(2, 16, 9, 9)
    out, grad_x = _forward_backward(recomposing, x, grad)
    assert out.grad_fn.name() == CPP_NODE
    torch.testing.assert_close(grad_x, _forward_backward(keeping, x, grad)[1])


def test_recompute_kernel_must_be_bool():
    with pytest.raises(ValueError, match="recompute_kernel must be True or "
                       "False, but got 'no'"):
        DOConv2d(4, 4, 3, recompute_kernel='no')


def test_switch_and_conv_cfg_take_the_option():
    from mmcv.cnn import build_conv_layer
    from mmengine.config import Config

    from mmdoconv import apply_doconv_switch
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    cfg = Config(dict(runner_type='DOConvRunner',
                      doconv=dict(recompute_kernel=False)))
    apply_doconv_switch(model, cfg)
    assert [layer.recompute_kernel for layer in model] == [False, False]
    assert 'recompute_kernel=False' in repr(model)
    layer = build_conv_layer(dict(type='DOConv', recompute_kernel=False), 4,
                             4, 3)
    assert isinstance(layer, DOConv2d) and not layer.recompute_kernel
    pointwise = build_conv_layer(dict(type='DOConv', recompute_kernel=False),
                                 4, 4, 1)
    assert type(pointwise) is nn.Conv2d
    with pytest.raises(ValueError, match="recompute_kernel must be True or "
                       "False, but got 'yes'"):
        build_conv_layer(dict(type='DOConv', recompute_kernel='yes'), 4, 4, 1)
    with pytest.raises(ValueError, match="recompute_kernel must be True or "
                       "False, but got 1"):
        apply_doconv_switch(
            nn.Sequential(nn.Conv2d(4, 4, 3)),
            Config(dict(runner_type='DOConvRunner',
                        doconv=dict(recompute_kernel=1))))


def test_mmcv_efficient_conv_bn_eval_while_training():
    """A training conv before a frozen BN: mmcv's ConvModule hands the
    layer ``W * coeff`` (``efficient_conv_bn_eval``), which the recomposing
    path must differentiate back to W, D and the BN affine parameters as
    the unfused module does."""
    from mmcv.cnn import ConvModule
    torch.manual_seed(0)
    fused = ConvModule(8, 8, 3, padding=1, conv_cfg=dict(type='DOConv'),
                       norm_cfg=dict(type='BN'), efficient_conv_bn_eval=True)
    with torch.no_grad():
        fused.conv.D.normal_(0, 0.3)
        fused.bn.running_mean.normal_()
        fused.bn.running_var.uniform_(0.5, 2.0)
    fused.train()
    fused.bn.eval()  # frozen statistics: mmcv takes the efficient path
    unfused = copy.deepcopy(fused)
    unfused.efficient_conv_bn_eval_forward = None
    x = torch.randn(2, 8, 9, 9)
    seen = []
    fused.norm.register_forward_hook(lambda *args: seen.append('bn'))
    out = fused(x)
    assert seen == []  # the BN was folded into the conv's weight
    conv_node = out.grad_fn.next_functions[0][0]  # under the ReLU
    assert conv_node.name() == CPP_NODE
    expected = unfused(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    expected.sum().backward()
    for name, param in fused.named_parameters():
        other = dict(unfused.named_parameters())[name]
        assert param.grad.abs().sum() > 0, name
        torch.testing.assert_close(param.grad, other.grad, rtol=1e-5,
                                   atol=1e-4, msg=name)


def test_mmdet_resnet_with_cp_trains_as_without():
    """mmdet's ResNet with ``with_cp=True`` (torch.utils.checkpoint around
    every block) and DO-Conv layers: the gradients of the run without it."""
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    plain_cp = ResNet(18, conv_cfg=dict(type='DOConv'), norm_eval=False)
    with torch.no_grad():
        for module in plain_cp.modules():
            if isinstance(module, DOConv2d):
                module.D.normal_(0, 0.1)
    with_cp = copy.deepcopy(plain_cp)
    for module in with_cp.modules():
        if hasattr(module, 'with_cp'):
            module.with_cp = True
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    for model in (plain_cp, with_cp):
        model.train()
        sum(out.sum() for out in model(x)).backward()
    doconv_layers = 0
    for (name, mine), theirs in zip(with_cp.named_parameters(),
                                    plain_cp.parameters()):
        doconv_layers += name.endswith('.D')
        # Summed over a feature pyramid, the stem's gradients are ~1e4:
        # round-off scales with them.
        scale = theirs.grad.abs().max().item()
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4,
                                   atol=1e-5 * scale, msg=name)
    assert doconv_layers == 17


def test_recomposed_kernels_share_one_buffer_on_cpu(monkeypatch):
    """On CPU every recomposition (forward and backward, any layer of the
    thread) writes W' into one reused buffer, grown to the largest W'; the
    gradients stay those of the W'-keeping layers."""
    import mmdoconv.cnn.recomposing_conv as recomposing_conv
    monkeypatch.setattr(recomposing_conv, '_python_only', True)
    small, small_keeping = _layers()  # W' (16, 8, 3, 3)
    large, large_keeping = _layers(groups=1, kernel_size=5, padding=2)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    pointers = []
    compose_rows = recomposing_conv.compose_rows

    def recording_compose_rows(*args, out=None, **kwargs):
        kernel = compose_rows(*args, out=out, **kwargs)
        pointers.append(kernel.data_ptr())
        return kernel

    monkeypatch.setattr(recomposing_conv, 'compose_rows',
                        recording_compose_rows)
    for layer, keeping in ((small, small_keeping), (large, large_keeping)):
        grad = torch.randn_like(keeping(x))
        layer(x).backward(grad)
        keeping(x).backward(grad)
        torch.testing.assert_close(layer.weight.grad, keeping.weight.grad)
        torch.testing.assert_close(layer.D.grad, keeping.D.grad)
    buffer = recomposing_conv._workspaces.buffers[torch.float32]
    assert buffer.numel() >= 16 * 8 * 25
    # two compositions per layer; the large layer's both in the grown buffer
    assert len(pointers) == 4 and len(set(pointers[2:])) == 1
    assert pointers[2] == buffer.data_ptr()
