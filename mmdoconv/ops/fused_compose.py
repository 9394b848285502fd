"""The fused kernel composition and the choice between it and pure PyTorch.

:func:`fused_compose` computes ``W'[o, c, s] = sum_d D[c, s, d] W[o, c, d]``
with the C++ extension on CPU (:mod:`mmdoconv.ops.extension`) or the Triton
kernels on CUDA (:mod:`mmdoconv.ops.triton_compose`); :func:`fused_backend`
says which applies to a weight, or ``None`` when the caller should use the
pure-PyTorch composition.  The first choice per device type is logged once,
with the reason when it is the fallback.

``MMDOCONV_COMPOSE`` chooses, read and checked at the first composition:
``auto`` (or unset) as above, ``torch`` turns the fused paths off (benchmarks
compare both in one process with :func:`force_backend`), and ``triton``
sends every device's composition to the Triton kernels: on CUDA as ``auto``
does, and on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``,
set before triton is imported), which is how the CPU test suite runs the
CUDA code path (dispatch, self-check, recomposing backward, fold) whole.
"""
import contextlib
import os
from typing import Iterator, Optional

import torch
from mmengine.logging import print_log
from torch import Tensor

from .extension import load_extension
from .tracing import is_capturing_graph, is_tracing

_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: Values of MMDOCONV_COMPOSE.
COMPOSE_CHOICES = ('auto', 'torch', 'triton')
# Read once, at the first composition (fused_backend runs on every training
# forward of every layer).
_env_choice: Optional[str] = None
_reported = set()
_forced: Optional[str] = None


@contextlib.contextmanager
def force_backend(name: Optional[str]) -> Iterator[None]:
    """Use ``'torch'`` (pure PyTorch) or ``None`` (automatic) inside the block."""
    global _forced
    if name not in (None, 'torch'):
        raise ValueError(f"backend must be None or 'torch', but got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def compose_choice() -> str:
    """``MMDOCONV_COMPOSE`` (``auto`` when unset), read and checked once.

    Raises:
        ValueError: If the variable is not one of :data:`COMPOSE_CHOICES`.
    """
    global _env_choice
    if _env_choice is None:
        value = os.environ.get('MMDOCONV_COMPOSE', '').strip().lower()
        value = value or 'auto'
        if value not in COMPOSE_CHOICES:
            raise ValueError(f'MMDOCONV_COMPOSE must be one of '
                             f'{", ".join(COMPOSE_CHOICES)}, but got '
                             f'{os.environ["MMDOCONV_COMPOSE"]!r}')
        _env_choice = value
    return _env_choice


def fused_backend(weight: Tensor, tracing_checked: bool = False
                  ) -> Optional[str]:
    """``'cpp'``, ``'triton'`` or ``None`` (pure PyTorch) for this weight.

    ``tracing_checked``: the caller runs only where TorchScript and ONNX
    export do not trace (the recomposing layer's ``autograd.Function``), so
    those checks, a few microseconds per call and two calls per layer and
    step, are skipped; FX, ``torch.compile`` and ``torch.export`` (compiled
    autograd traces backwards too) are still asked.
    """
    if _forced == 'torch' or weight.dtype not in _FUSED_DTYPES or (
            is_capturing_graph() if tracing_checked else is_tracing()):
        return None
    device = weight.device.type
    choice = compose_choice()
    if choice == 'torch':
        backend, why = None, 'MMDOCONV_COMPOSE=torch'
    elif choice == 'triton' or device == 'cuda':
        from .triton_compose import triton_available
        why = triton_available(weight.device) or triton_self_check(
            weight.device)
        backend = 'triton' if not why else None
    elif device == 'cpu':
        module, why = load_extension()
        backend = 'cpp' if module is not None else None
    else:
        backend, why = None, f'no fused kernel for device {device!r}'
    if device not in _reported:
        _reported.add(device)
        if backend is None:
            print_log(f'DO-Conv composition on {device}: pure PyTorch ({why})',
                      logger='current')
        else:
            print_log(f'DO-Conv composition on {device}: fused ({backend})',
                      logger='current')
    return backend


_self_checks = {}


def triton_self_check(device: torch.device) -> str:
    """``''`` when the Triton kernels compile, run and agree with the
    composition's definition on ``device``, else the reason.

    Checked once per device, whatever the outcome, and never raises: it runs
    inside the user's step wherever the first composition on a device happens
    (a training forward, where an ``autograd.Function`` turns grad mode off,
    an eval under ``no_grad``, a fold), and a GPU whose Triton cannot compile
    or run these kernels then trains on the pure path instead of failing.
    The reference is computed in float64 on the CPU from the definition, so
    neither grad mode nor TF32 matmuls (``allow_tf32``) can move it.
    """
    key = str(device)
    if key not in _self_checks:
        try:
            _self_checks[key] = _triton_agrees(device)
        except Exception as error:  # compile, launch or any other failure
            _self_checks[key] = (f'the Triton kernels fail here: '
                                 f'{type(error).__name__}: {error}')
    return _self_checks[key]


def _triton_agrees(device: torch.device) -> str:
    from . import triton_compose
    groups = 2
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(12, 5, 9, generator=generator)
    d_full = torch.randn(10, 9, 9, generator=generator)
    grad = torch.randn(12, 5, 9, generator=generator)
    with torch.no_grad():
        got = triton_compose.compose_forward(weight.to(device),
                                             d_full.to(device), groups)
        got_grads = triton_compose.compose_backward(
            grad.to(device), weight.to(device), d_full.to(device), groups,
            True, True)
    expected = _reference_compose(weight.double(), d_full.double(),
                                  grad.double(), groups)
    agree = all(
        torch.allclose(a.detach().cpu().double(), b, rtol=1e-4, atol=1e-4)
        for a, b in zip((got, *got_grads), expected))
    return '' if agree else (
        'the Triton kernels disagree with the composition here')


def _reference_compose(weight: Tensor, d_full: Tensor, grad: Tensor,
                       groups: int):
    """``(W', grad W, grad D)`` from the definition, elementwise: no matmul
    (TF32) and no autograd (grad mode) is involved."""
    out_channels, in_per_group, d_mul = weight.shape
    w = weight.reshape(groups, out_channels // groups, in_per_group, 1, d_mul)
    d = d_full.reshape(groups, 1, in_per_group, -1, d_mul)
    g = grad.reshape(groups, out_channels // groups, in_per_group, -1, 1)
    composed = (w * d).sum(-1).reshape(out_channels, in_per_group, -1)
    grad_weight = (g * d).sum(-2).reshape(weight.shape)
    grad_d = (g * w).sum(1).reshape(d_full.shape)
    return composed, grad_weight, grad_d


def _as_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    # Tensor.to is a few microseconds even when it returns the tensor itself.
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision parameters compose in float32 and round once at the end.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_identity_backend(identity: bool, backend: str) -> None:
    if identity and backend != 'cpp':
        raise ValueError(f"identity=True needs the 'cpp' backend (the C++ "
                         f'kernels add the identity themselves), but got '
                         f'{backend!r}: hand it D + I instead')


def compose_rows(weight: Tensor, d_full: Tensor, groups: int, backend: str,
                 out: Optional[Tensor] = None,
                 identity: bool = False) -> Tensor:
    """``W'`` from the fused kernel of ``backend``, without autograd.

    Shapes: ``weight (C_out, C_in/groups, D_mul)``, ``d_full (C_in, M*N,
    D_mul)``; returns ``(C_out, C_in/groups, M*N)`` in W's dtype.

    Args:
        out: Optional memory for ``W'`` (contiguous, W's dtype, at least as
            many elements), used by the C++ kernel where W composes in its
            own dtype (float32, float64); the result is then a view of it.
        identity: ``d_full`` is ``D - I`` (the layer's parameter) and the
            C++ kernels (``backend='cpp'`` only) add the tiled identity
            (:func:`~mmdoconv.cnn.compose.doconv_identity`) on the fly
            instead of materialising D + I.
    """
    _check_identity_backend(identity, backend)
    dtype = _compute_dtype(weight.dtype)
    d_full = _as_dtype(d_full, dtype)
    options = dict(identity=True) if identity else {}
    if backend == 'cpp' and out is not None and weight.dtype == dtype:
        return _ops(backend).compose_forward(weight, d_full, groups, out,
                                             **options)
    out = _ops(backend).compose_forward(_as_dtype(weight, dtype), d_full,
                                        groups, **options)
    return _as_dtype(out, weight.dtype)


def compose_rows_backward(grad: Tensor, weight: Tensor, d_full: Tensor,
                          groups: int, backend: str, need_weight: bool,
                          need_d: bool, in_place: bool = False,
                          identity: bool = False):
    """``(grad W, grad D)`` of :func:`compose_rows` for ``grad`` = grad W'
    (None where not needed), in W's and D's dtypes.

    With ``in_place=True`` the caller hands ``grad`` over: the C++ kernel
    may write grad W over it (saves one allocation of W's size).
    ``identity`` as for :func:`compose_rows` (grad D is the same either way).
    """
    _check_identity_backend(identity, backend)
    dtype = _compute_dtype(weight.dtype)
    d_compute = _as_dtype(d_full, dtype)
    grad, weight_compute = _as_dtype(grad, dtype), _as_dtype(weight, dtype)
    if backend == 'cpp':
        grad_weight, grad_d = _ops(backend).compose_backward(
            grad, weight_compute, d_compute, groups, need_weight, need_d,
            in_place, identity)
    else:
        grad_weight, grad_d = _ops(backend).compose_backward(
            grad, weight_compute, d_compute, groups, need_weight, need_d)
    if grad_weight is not None:
        grad_weight = _as_dtype(grad_weight, weight.dtype)
    if grad_d is not None:
        grad_d = _as_dtype(grad_d, d_full.dtype)
    return grad_weight, grad_d


class FusedCompose(torch.autograd.Function):
    """``W' = D^T o W`` with one read of W and one write of W' per pass.

    Shapes: ``weight (C_out, C_in/groups, D_mul)``, ``d_full (C_in, M*N,
    D_mul)``; returns ``(C_out, C_in/groups, M*N)``.  With ``identity``,
    ``d_full`` is ``D - I`` (:func:`compose_rows`).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, d_full: Tensor, groups: int,
                backend: str, identity: bool = False) -> Tensor:
        ctx.save_for_backward(weight, d_full)
        ctx.groups, ctx.backend, ctx.identity = groups, backend, identity
        return compose_rows(weight, d_full, groups, backend,
                            identity=identity)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, d_full = ctx.saved_tensors
        grad_weight, grad_d = compose_rows_backward(
            grad, weight, d_full, ctx.groups, ctx.backend,
            *ctx.needs_input_grad[:2], identity=ctx.identity)
        return grad_weight, grad_d, None, None, None


def _ops(backend: str):
    if backend == 'cpp':
        return load_extension()[0]
    from . import triton_compose
    return triton_compose


def fused_compose(weight: Tensor, d_full: Tensor, groups: int,
                  backend: str, identity: bool = False) -> Tensor:
    """Apply :class:`FusedCompose` (``backend`` from :func:`fused_backend`)."""
    return FusedCompose.apply(weight, d_full, groups, backend, identity)
