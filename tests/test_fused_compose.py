"""The fused kernel composition (C++ on CPU, Triton on CUDA) against pure PyTorch.

The pure-PyTorch composition (``compose_grouped``, batched GEMMs) is the
reference: the fused paths must give the same W' and the same gradients for W
and D over the layer tests' shape space, and the fold must stay bit-identical
to the unfolded eval forward on the fused path.
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmdoconv import DOConv2d
from mmdoconv.cnn.compose import compose_grouped as reference
from mmdoconv.cnn.compose import compose_kernel, doconv_identity
from mmdoconv.ops import fused_compose as fused_module
from mmdoconv.ops.extension import library_path, load_extension
from mmdoconv.ops.fused_compose import (FusedCompose, force_backend,
                                        fused_backend)
from runs import run_python, tool_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@st.composite
def compose_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    in_per_group = draw(st.integers(1, 20))
    out_per_group = draw(st.integers(1, 6))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    positions = kernel[0] * kernel[1]
    d_mul = draw(st.one_of(st.just(positions),
                           st.integers(positions, 2 * positions + 3)))
    return dict(groups=groups, in_per_group=in_per_group,
                out_per_group=out_per_group, positions=positions,
                d_mul=d_mul)


def make_tensors(case, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    groups = case['groups']
    weight = torch.randn(groups * case['out_per_group'], case['in_per_group'],
                         case['d_mul'], dtype=dtype, generator=generator)
    d_full = torch.randn(groups * case['in_per_group'], case['positions'],
                         case['d_mul'], dtype=dtype, generator=generator)
    return weight, d_full


def _tolerance(case: dict, dtype: torch.dtype) -> dict:
    # Sums of up to D_mul (forward, grad W) and C_out (grad D) products in
    # another order: float32 round-off scaled by the sum length.
    if dtype == torch.float32:
        return dict(rtol=1e-5,
                    atol=1e-5 * max(case['d_mul'], case['out_per_group']))
    return dict(rtol=1e-12, atol=1e-12)


def test_setup_built_the_extension():
    module, why = load_extension()
    assert module is not None, why
    assert fused_backend(torch.zeros(1)) == 'cpp'
    assert os.path.exists(library_path())


@settings(max_examples=120, deadline=None)
@given(case=compose_cases(), dtype=st.sampled_from([torch.float32,
                                                    torch.float64]),
       seed=st.integers(0, 2**16))
def test_cpp_matches_pure_pytorch(case, dtype, seed):
    weight, d_full = make_tensors(case, dtype, seed)
    groups = case['groups']
    w_ref = weight.clone().requires_grad_()
    d_ref = d_full.clone().requires_grad_()
    expected = reference(w_ref, d_ref, groups)
    grad = torch.randn(expected.shape, dtype=dtype,
                       generator=torch.Generator().manual_seed(seed + 1))
    expected.backward(grad)
    w_fused = weight.clone().requires_grad_()
    d_fused = d_full.clone().requires_grad_()
    got = FusedCompose.apply(w_fused, d_fused, groups, 'cpp')
    got.backward(grad)
    tol = _tolerance(case, dtype)
    torch.testing.assert_close(got, expected, **tol)
    torch.testing.assert_close(w_fused.grad, w_ref.grad, **tol)
    torch.testing.assert_close(d_fused.grad, d_ref.grad, **tol)
    assert w_fused.grad.is_contiguous()
    # The layer's path: D - I handed over, the kernels add the identity.
    identity = doconv_identity(case['positions'], case['d_mul'], dtype)
    w_layer = weight.clone().requires_grad_()
    d_layer = (d_full - identity).requires_grad_()
    got = FusedCompose.apply(w_layer, d_layer, groups, 'cpp', True)
    got.backward(grad)
    torch.testing.assert_close(got, expected, **tol)
    torch.testing.assert_close(w_layer.grad, w_ref.grad, **tol)
    torch.testing.assert_close(d_layer.grad, d_ref.grad, **tol)


#: Kernel extents of the depthwise convs the census meets: 3x3 to 9x9,
#: SegNeXt's strips (1x7 ... 21x1), and the 31x31 of RepLKNet.
DEPTHWISE_KERNELS = [(3, 3), (5, 5), (7, 7), (9, 9), (1, 7), (7, 1), (1, 21),
                     (11, 1), (31, 31)]


@st.composite
def depthwise_cases(draw):
    """The per-channel loops (channel form): groups of one input channel,
    a channel multiplier, or D_mul > M*N with a few input channels."""
    kernel = draw(st.sampled_from(DEPTHWISE_KERNELS))
    positions = kernel[0] * kernel[1]
    d_mul = draw(st.one_of(st.just(positions),
                           st.integers(positions, positions + 9)))
    in_per_group = 1 if d_mul == positions else draw(st.integers(1, 3))
    groups = draw(st.integers(2, 40 if positions < 900 else 4))
    return dict(groups=groups, in_per_group=in_per_group,
                out_per_group=draw(st.integers(1, 3)), positions=positions,
                d_mul=d_mul)


@settings(max_examples=80, deadline=None)
@given(case=depthwise_cases(), dtype=st.sampled_from([torch.float32,
                                                      torch.float64]),
       seed=st.integers(0, 2**16))
def test_cpp_depthwise_and_large_kernels_match_pure_pytorch(case, dtype,
                                                            seed):
    """Depthwise (and channel-multiplier) convs up to 31x31 and strip
    kernels take the channel form: W', grad W and grad D equal the
    pure-PyTorch composition's."""
    test_cpp_matches_pure_pytorch.hypothesis.inner_test(case, dtype, seed)


@pytest.mark.parametrize('groups,in_per_group,positions,d_mul', [
    (1, 5, 9, 9), (3, 1, 9, 9), (2, 3, 4, 7), (1, 2, 25, 25),
    (6, 1, 49, 49), (4, 1, 7, 7), (5, 1, 25, 30), (3, 2, 9, 11)])
def test_cpp_gradcheck(groups, in_per_group, positions, d_mul):
    case = dict(groups=groups, in_per_group=in_per_group, out_per_group=3,
                positions=positions, d_mul=d_mul)
    weight, d_full = make_tensors(case, torch.float64, 0)
    weight.requires_grad_()
    d_full.requires_grad_()
    for identity in (False, True):
        assert torch.autograd.gradcheck(
            lambda w, d: FusedCompose.apply(w, d, groups, 'cpp', identity),
            (weight, d_full))


def test_only_the_gradients_asked_for():
    case = dict(groups=2, in_per_group=8, out_per_group=4, positions=9, d_mul=9)
    weight, d_full = make_tensors(case, torch.float32, 3)
    grad = torch.randn(8, 8, 9)
    module = load_extension()[0]
    both = module.compose_backward(grad, weight, d_full, 2, True, True)
    only_w = module.compose_backward(grad, weight, d_full, 2, True, False)
    only_d = module.compose_backward(grad, weight, d_full, 2, False, True)
    assert only_w[1] is None and only_d[0] is None
    torch.testing.assert_close(only_w[0], both[0], rtol=0, atol=0)
    torch.testing.assert_close(only_d[1], both[1], rtol=0, atol=0)


@pytest.mark.parametrize('groups,in_per_group,out_per_group,d_mul', [
    (1, 40, 70, 9),  # 70 rows per task: more than one 32-row block
    (4, 3, 5, 9), (2, 3, 4, 13)])  # grouped; D_mul > M*N
def test_cpp_in_place_gradient_and_given_memory(groups, in_per_group,
                                                out_per_group, d_mul):
    """``compose_backward(in_place=True)`` gives the gradients of the
    allocating call and, in the row form, writes grad W over grad W';
    ``compose_forward(out=...)`` writes W' into the given memory."""
    case = dict(groups=groups, in_per_group=in_per_group,
                out_per_group=out_per_group, positions=9, d_mul=d_mul)
    weight, d_full = make_tensors(case, torch.float32, 7)
    module = load_extension()[0]
    grad = torch.randn(groups * out_per_group, in_per_group, 9)
    expected = module.compose_backward(grad, weight, d_full, groups, True,
                                       True)
    handed_over = grad.clone()
    got = module.compose_backward(handed_over, weight, d_full, groups, True,
                                  True, in_place=True)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
    written_over = got[0].data_ptr() == handed_over.data_ptr()
    assert written_over == (d_mul == 9)  # the row form only
    memory = torch.full((weight.shape[0] * in_per_group * 9 + 5, ), 7.0)
    composed = module.compose_forward(weight, d_full, groups, memory)
    assert composed.data_ptr() == memory.data_ptr()
    torch.testing.assert_close(composed, reference(weight, d_full, groups),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(memory[-5:], torch.full((5, ), 7.0))
    with pytest.raises(RuntimeError, match='at least'):
        module.compose_forward(weight, d_full, groups, memory[:10])


def test_bfloat16_composes_in_float32():
    case = dict(groups=1, in_per_group=16, out_per_group=8, positions=9,
                d_mul=9)
    weight, d_full = make_tensors(case, torch.float32, 5)
    weight, d_full = weight.bfloat16(), d_full.bfloat16()
    got = FusedCompose.apply(weight, d_full, 1, 'cpp')
    assert got.dtype == torch.bfloat16
    expected = reference(weight.float(), d_full.float(), 1).bfloat16()
    # One rounding of the float32 sum: identical to rounding the reference.
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize('groups,d_mul', [(1, None), (4, None), (16, None),
                                          (1, 20)])
def test_layer_fused_equals_pure_and_fold_is_bit_identical(groups, d_mul):
    torch.manual_seed(0)
    layer = DOConv2d(16, 32, 3, padding=1, groups=groups, D_mul=d_mul,
                     D_init='random')  # non-zero D - I
    assert layer.D.abs().max() > 0.1
    x = torch.randn(2, 16, 10, 10)
    out = layer(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in (layer.weight, layer.D)]
    layer.zero_grad()
    with force_backend('torch'):
        out_pure = layer(x)
        out_pure.square().sum().backward()
    torch.testing.assert_close(out, out_pure, rtol=1e-5, atol=1e-5)
    for fused_grad, param in zip(grads, (layer.weight, layer.D)):
        torch.testing.assert_close(fused_grad, param.grad, rtol=1e-4,
                                   atol=1e-4)
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer.fold()(x), layer(x))


def test_tracing_uses_pure_pytorch():
    layer = DOConv2d(4, 4, 3, padding=1, D_init='random').eval()
    x = torch.randn(1, 4, 6, 6)
    exported = torch.export.export(layer, (x, ))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert not any('FusedCompose' in target for target in targets)
    torch.testing.assert_close(exported.module()(x), layer(x))
    traced = torch.jit.trace(layer, (x, ))
    torch.testing.assert_close(traced(x), layer(x))


def test_choice_is_reported_once(monkeypatch):
    messages = []
    monkeypatch.setattr(fused_module, '_reported', set())
    monkeypatch.setattr(fused_module, 'print_log',
                        lambda msg, *a, **k: messages.append(msg))
    weight = torch.randn(4, 2, 9)
    d_full = torch.randn(2, 9, 9)
    for _ in range(3):
        compose_kernel(weight.reshape(4, 2, 3, 3),
                       d_full - torch.eye(9), torch.eye(9), (3, 3), 1)
    assert messages == ['DO-Conv composition on cpu: fused (cpp)']


def _backend_script(tmp_path, code):
    """A script run in a new process (forked from the tests' tool server,
    which never imports mmdoconv, so the variable is read as in a fresh
    interpreter)."""
    script = tmp_path / 'backend.py'
    script.write_text('import torch\nfrom mmdoconv.ops.fused_compose import '
                      f'fused_backend\n{code}\n')
    return str(script)


def test_environment_variable_selects_pure_pytorch(tmp_path):
    script = _backend_script(tmp_path, 'print(fused_backend(torch.zeros(1)))')
    result = run_python(script, env=tool_env(MMDOCONV_COMPOSE='torch'))
    assert result.stdout.strip().splitlines()[-1] == 'None'
    assert 'pure PyTorch (MMDOCONV_COMPOSE=torch)' in result.stdout + \
        result.stderr


ISA_CASES = [  # (groups, in_per_group, out_per_group, positions, d_mul)
    (1, 40, 9, 9, 9), (3, 7, 5, 9, 9), (2, 33, 4, 4, 4), (1, 20, 6, 1, 1),
    (1, 6, 5, 25, 25), (2, 5, 3, 9, 12),
    (24, 1, 1, 49, 49), (10, 1, 2, 25, 25), (9, 1, 1, 7, 7)]  # depthwise


def _isa_inputs():
    """``(case, weight, d_full, grad W')`` of ISA_CASES, float32 and 64."""
    for dtype in (torch.float32, torch.float64):
        for seed, (groups, cg, opg, positions, d_mul) in enumerate(ISA_CASES):
            case = dict(groups=groups, in_per_group=cg, out_per_group=opg,
                        positions=positions, d_mul=d_mul)
            weight, d_full = make_tensors(case, dtype, seed)
            grad = torch.randn(groups * opg, cg, positions, dtype=dtype,
                               generator=torch.Generator().manual_seed(seed))
            yield case, weight, d_full, grad


def _compose_isa_cases(module) -> list:
    """W', grad W and grad D (in place) of each case from the C++ kernels:
    from D, then from D - I with the kernels adding the identity."""
    results = []
    for case, weight, d_full, grad in _isa_inputs():
        identity = doconv_identity(case['positions'], case['d_mul'],
                                   weight.dtype)
        for d, add_identity in ((d_full, False),
                                (d_full - identity, True)):
            results.append(module.compose_forward(
                weight, d, case['groups'], identity=add_identity))
            results.extend(module.compose_backward(
                grad.clone(), weight, d, case['groups'], True, True, True,
                identity=add_identity))
    return results


@pytest.mark.parametrize('isa', ['avx2', 'baseline'])
def test_every_instruction_set_variant_composes_the_same(isa, tmp_path):
    """The C++ kernels exist in AVX-512, AVX2 and baseline variants (and a
    position form for float32 on AVX-512); the CPU picks one, so a machine
    tests only its own unless ``MMDOCONV_CPU_ISA`` narrows the choice.  A new
    process with the variable set composes cases that reach every loop of
    the kernels (vector and scalar parts of rows, groups, 1, 4, 9 and 25
    positions, D_mul > M*N); each result must match the pure-PyTorch
    composition and this process's own variant."""
    out = tmp_path / 'results.pt'
    script = tmp_path / 'isa.py'
    script.write_text(
        'import sys, torch\n'
        f'sys.path.insert(0, {os.path.join(ROOT, "tests")!r})\n'
        'from mmdoconv.ops.extension import load_extension\n'
        'from test_fused_compose import _compose_isa_cases\n'
        'module = load_extension()[0]\n'
        f'torch.save(_compose_isa_cases(module), {str(out)!r})\n'
        'print(module.instruction_set())\n')
    result = run_python(str(script), env=tool_env(MMDOCONV_CPU_ISA=isa))
    module = load_extension()[0]
    order = ['baseline', 'avx2', 'avx512']
    expected_isa = order[min(order.index(isa),
                             order.index(module.instruction_set()))]
    assert result.stdout.strip().splitlines()[-1] == expected_isa
    theirs = iter(torch.load(out))
    ours = iter(_compose_isa_cases(module))
    for case, weight, d_full, grad in _isa_inputs():
        w_ref = weight.clone().requires_grad_()
        d_ref = d_full.clone().requires_grad_()
        expected = reference(w_ref, d_ref, case['groups'])
        expected.backward(grad)
        tol = _tolerance(case, weight.dtype)
        for want in (expected.detach(), w_ref.grad, d_ref.grad) * 2:
            got, mine = next(theirs), next(ours)
            torch.testing.assert_close(got, want, **tol)
            # Baseline x86-64 has no fused multiply-add: round-off differs.
            torch.testing.assert_close(got, mine, **tol)
    assert next(theirs, None) is None


def test_unknown_instruction_set_is_an_error(tmp_path):
    script = tmp_path / 'isa.py'
    script.write_text('import torch\n'
                      'from mmdoconv.ops.extension import load_extension\n'
                      'load_extension()[0].compose_forward(torch.ones(2, 1, 1),'
                      ' torch.ones(1, 1, 1), 1)\n')
    result = run_python(str(script), env=tool_env(MMDOCONV_CPU_ISA='sse9'),
                        check=False)
    assert result.returncode != 0
    assert ("MMDOCONV_CPU_ISA must be avx512, avx2 or baseline, but got "
            "'sse9'") in result.stderr


def test_triton_kernels_in_the_interpreter():
    """The CUDA kernels' code, run by Triton's CPU interpreter."""
    tool = os.path.join(ROOT, 'tools', 'misc', 'check_fused_compose.py')
    env = dict(os.environ, TRITON_INTERPRET='1')
    result = subprocess.run([sys.executable, tool, '--backend', 'triton',
                             '--device', 'cpu'], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'all 12 cases agree' in result.stdout, result.stdout
    assert 'layer self-check: passed' in result.stdout


def test_unknown_environment_choice_is_an_error(tmp_path):
    script = _backend_script(tmp_path, 'fused_backend(torch.zeros(1))')
    result = run_python(script, env=tool_env(MMDOCONV_COMPOSE='fastest'),
                        check=False)
    assert result.returncode != 0
    assert ("MMDOCONV_COMPOSE must be one of auto, torch, triton, but got "
            "'fastest'") in result.stderr


def test_triton_self_check_turns_a_failing_kernel_into_the_pure_path(
        monkeypatch):
    from mmdoconv.ops import triton_compose

    def broken(*args, **kwargs):
        raise RuntimeError('PTX assembly failed')

    calls = []
    monkeypatch.setattr(fused_module, '_self_checks', {})
    monkeypatch.setattr(triton_compose, 'compose_forward',
                        lambda *a: calls.append(a) or broken())
    for _ in range(2):  # checked once: the failure is cached too
        why = fused_module.triton_self_check(torch.device('cpu'))
        assert why == ('the Triton kernels fail here: RuntimeError: PTX '
                       'assembly failed')
    assert len(calls) == 1


def test_triton_self_check_rejects_a_kernel_that_disagrees(monkeypatch):
    """The reference is the definition: W' off by 0.1 % fails the check,
    the exact gradients notwithstanding."""
    from mmdoconv.ops import triton_compose

    def gradients(grad, weight, d_full, groups, need_weight, need_d):
        with torch.enable_grad():
            w = weight.clone().requires_grad_()
            d = d_full.clone().requires_grad_()
            reference(w, d, groups).backward(grad)
        return [w.grad, d.grad]

    monkeypatch.setattr(fused_module, '_self_checks', {})
    monkeypatch.setattr(triton_compose, 'compose_forward',
                        lambda w, d, g: reference(w, d, g) * 1.001)
    monkeypatch.setattr(triton_compose, 'compose_backward', gradients)
    assert fused_module.triton_self_check(torch.device('cpu')) == (
        'the Triton kernels disagree with the composition here')
    # ... and the same kernels without the error pass.
    monkeypatch.setattr(fused_module, '_self_checks', {})
    monkeypatch.setattr(triton_compose, 'compose_forward', reference)
    assert fused_module.triton_self_check(torch.device('cpu')) == ''


def test_triton_self_check_passes_under_no_grad_and_tf32(tmp_path):
    """Where the layer first composes on a device grad mode may be off
    (eval, fold, an autograd.Function's forward) and TF32 matmuls on; the
    self-check of the real kernels (Triton's interpreter) passes in each,
    and is checked once."""
    script = _backend_script(tmp_path, """
from mmdoconv.ops import fused_compose as f
from mmdoconv.ops import triton_compose
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
calls = []
forward = triton_compose.compose_forward
triton_compose.compose_forward = lambda *a: calls.append(1) or forward(*a)
with torch.no_grad():
    print(repr(f.triton_self_check(torch.device('cpu'))))
print(repr(f.triton_self_check(torch.device('cpu'))), len(calls))
with torch.inference_mode():
    w = torch.randn(6, 3, 9)
    print(fused_backend(w))
""")
    result = run_python(script, env=tool_env(TRITON_INTERPRET='1',
                                             MMDOCONV_COMPOSE='triton'))
    printed = [line for line in result.stdout.splitlines()
               if ' - mmengine - ' not in line]
    assert printed == ["''", "'' 1", 'triton'], result.stdout + result.stderr


def test_the_kernels_add_only_the_tiled_identity():
    """The fused paths hand the kernels D - I and let them add the identity
    only when the layer's identity is :func:`doconv_identity`; any other
    tensor is added as given (materialised D + I), so the result follows
    the ``identity`` argument either way."""
    from mmdoconv.cnn.compose import is_tiled_identity
    identity = doconv_identity(9, 20)
    assert is_tiled_identity(identity)
    assert not is_tiled_identity(torch.eye(9) * 2)
    other = doconv_identity(9, 9)
    assert is_tiled_identity(other)
    other[0, 1] = 0.5  # in place: the cached answer must not be reused
    assert not is_tiled_identity(other)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 4, 9, generator=generator)
    d_minus_identity = torch.randn(4, 9, 9, generator=generator)
    for eye in (doconv_identity(9, 9), other):
        expected = reference(weight, d_minus_identity + eye, 1)
        got = compose_kernel(weight, d_minus_identity, eye, (3, 3), 1)
        torch.testing.assert_close(got.reshape(8, 4, 9), expected,
                                   rtol=1e-5, atol=1e-5)
    # Only the C++ kernels add the identity; the others must be handed D + I.
    from mmdoconv.ops.fused_compose import compose_rows
    with pytest.raises(ValueError, match="got 'triton'"):
        compose_rows(weight, d_minus_identity, 1, 'triton', identity=True)
