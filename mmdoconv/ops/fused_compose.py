"""The fused kernel composition and the choice between it and pure PyTorch.

:func:`fused_compose` computes ``W'[o, c, s] = sum_d D[c, s, d] W[o, c, d]``
with the C++ extension on CPU (:mod:`mmdoconv.ops.extension`) or the Triton
kernels on CUDA (:mod:`mmdoconv.ops.triton_compose`); :func:`fused_backend`
says which applies to a weight, or ``None`` when the caller should use the
pure-PyTorch composition.  The first choice per device type is logged once,
with the reason when it is the fallback.

``MMDOCONV_COMPOSE=torch`` turns the fused paths off (benchmarks compare both
in one process with :func:`force_backend`).
"""
import contextlib
import os
from typing import Iterator, Optional

import torch
from mmengine.logging import print_log
from torch import Tensor

from .extension import load_extension

_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# Read once: fused_backend runs on every training forward of every layer.
_ENV_CHOICE = os.environ.get('MMDOCONV_COMPOSE', '').lower()
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


def _tracing() -> bool:
    # torch.compile / torch.export, TorchScript tracing and ONNX export see
    # the pure-PyTorch ops; an opaque extension call would end the graph.
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export())


def fused_backend(weight: Tensor) -> Optional[str]:
    """``'cpp'``, ``'triton'`` or ``None`` (pure PyTorch) for this weight."""
    if _forced == 'torch' or _tracing() or weight.dtype not in _FUSED_DTYPES:
        return None
    device = weight.device.type
    if _ENV_CHOICE not in ('', 'auto', 'torch'):
        raise ValueError("MMDOCONV_COMPOSE must be 'auto' or 'torch', but "
                         f'got {_ENV_CHOICE!r}')
    if _ENV_CHOICE == 'torch':
        backend, why = None, 'MMDOCONV_COMPOSE=torch'
    elif device == 'cpu':
        module, why = load_extension()
        backend = 'cpp' if module is not None else None
    elif device == 'cuda':
        from .triton_compose import triton_available
        why = triton_available() or triton_self_check(weight.device)
        backend = 'triton' if not why else None
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
    """``''`` when the Triton kernels compile, run and agree with the pure
    composition on ``device`` (checked once per device), else the reason.

    The CUDA path is the one a CPU test suite cannot run; a GPU whose Triton
    cannot compile these kernels then trains on the pure path instead of
    failing mid-run.
    """
    key = str(device)
    if key not in _self_checks:
        from ..cnn.compose import compose_grouped
        from . import triton_compose
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(12, 5, 9, generator=generator).to(device)
        d_full = torch.randn(10, 9, 9, generator=generator).to(device)
        try:
            got = triton_compose.compose_forward(weight, d_full, 2)
            grads = triton_compose.compose_backward(
                torch.ones_like(got), weight, d_full, 2, True, True)
        except Exception as error:  # compile or launch failure
            _self_checks[key] = (f'the Triton kernels fail here: '
                                 f'{type(error).__name__}: {error}')
        else:
            w = weight.clone().requires_grad_()
            d = d_full.clone().requires_grad_()
            expected = compose_grouped(w, d, 2)
            expected.sum().backward()
            agree = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4)
                        for a, b in ((got, expected), (grads[0], w.grad),
                                     (grads[1], d.grad)))
            _self_checks[key] = '' if agree else (
                'the Triton kernels disagree with the pure composition here')
    return _self_checks[key]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision parameters compose in float32 and round once at the end.
    return torch.float64 if dtype == torch.float64 else torch.float32


def compose_rows(weight: Tensor, d_full: Tensor, groups: int, backend: str,
                 out: Optional[Tensor] = None) -> Tensor:
    """``W'`` from the fused kernel of ``backend``, without autograd.

    Shapes: ``weight (C_out, C_in/groups, D_mul)``, ``d_full (C_in, M*N,
    D_mul)``; returns ``(C_out, C_in/groups, M*N)`` in W's dtype.

    Args:
        out: Optional memory for ``W'`` (contiguous, W's dtype, at least as
            many elements), used by the C++ kernel where W composes in its
            own dtype (float32, float64); the result is then a view of it.
    """
    dtype = _compute_dtype(weight.dtype)
    if backend == 'cpp' and out is not None and weight.dtype == dtype:
        return _ops(backend).compose_forward(weight, d_full.to(dtype), groups,
                                             out)
    out = _ops(backend).compose_forward(weight.to(dtype), d_full.to(dtype),
                                        groups)
    return out.to(weight.dtype)


def compose_rows_backward(grad: Tensor, weight: Tensor, d_full: Tensor,
                          groups: int, backend: str, need_weight: bool,
                          need_d: bool, in_place: bool = False):
    """``(grad W, grad D)`` of :func:`compose_rows` for ``grad`` = grad W'
    (None where not needed), in W's and D's dtypes.

    With ``in_place=True`` the caller hands ``grad`` over: the C++ kernel
    may write grad W over it (saves one allocation of W's size).
    """
    dtype = _compute_dtype(weight.dtype)
    if backend == 'cpp':
        grad_weight, grad_d = _ops(backend).compose_backward(
            grad.to(dtype), weight.to(dtype), d_full.to(dtype), groups,
            need_weight, need_d, in_place)
    else:
        grad_weight, grad_d = _ops(backend).compose_backward(
            grad.to(dtype), weight.to(dtype), d_full.to(dtype), groups,
            need_weight, need_d)
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_d is not None:
        grad_d = grad_d.to(d_full.dtype)
    return grad_weight, grad_d


class FusedCompose(torch.autograd.Function):
    """``W' = D^T o W`` with one read of W and one write of W' per pass.

    Shapes: ``weight (C_out, C_in/groups, D_mul)``, ``d_full (C_in, M*N,
    D_mul)``; returns ``(C_out, C_in/groups, M*N)``.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, d_full: Tensor, groups: int,
                backend: str) -> Tensor:
        ctx.save_for_backward(weight, d_full)
        ctx.groups, ctx.backend = groups, backend
        return compose_rows(weight, d_full, groups, backend)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, d_full = ctx.saved_tensors
        grad_weight, grad_d = compose_rows_backward(
            grad, weight, d_full, ctx.groups, ctx.backend,
            *ctx.needs_input_grad[:2])
        return grad_weight, grad_d, None, None


def _ops(backend: str):
    if backend == 'cpp':
        return load_extension()[0]
    from . import triton_compose
    return triton_compose


def fused_compose(weight: Tensor, d_full: Tensor, groups: int,
                  backend: str) -> Tensor:
    """Apply :class:`FusedCompose` (``backend`` from :func:`fused_backend`)."""
    return FusedCompose.apply(weight, d_full, groups, backend)
