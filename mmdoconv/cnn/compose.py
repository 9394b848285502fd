"""The DO-Conv kernel maths as pure tensor functions.

DO-Conv (Cao et al., "DO-Conv: Depthwise Over-parameterized Convolutional
Layer", arXiv 2006.12030) trains two kernels per layer: a depthwise kernel
``D`` with one ``(M*N) x D_mul`` matrix per input channel, and a conventional
kernel ``W`` of shape ``(C_out, C_in/groups, D_mul)``.  Their composition is a
plain convolution kernel (paper Eq. 3, "kernel composition")::

    W'[o, c, s] = sum_d D[c, s, d] * W[o, c, d]      (W' = D^T o W)

where ``c`` runs over the input channels of output ``o``'s group and ``s`` over
the ``M*N`` kernel positions.  The layer stores ``D - I`` (paper §4: weight
decay must not shrink the identity), so callers pass the identity separately.
Nothing here touches modules; :mod:`mmdoconv.cnn.doconv` and :mod:`mmdoconv.deploy.fold`
build on these functions.
"""
import weakref
from typing import Tuple

import torch
from torch import Tensor

from ..ops.fused_compose import fused_backend, fused_compose


def doconv_identity(kernel_numel: int,
                    d_mul: int,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device = None) -> Tensor:
    """The identity part of ``D`` for one input channel, ``(M*N, D_mul)``.

    For ``D_mul == M*N`` this is the identity matrix.  For ``D_mul > M*N`` the
    paper (§4.5) initialises ``D`` "by filling (M*N)x(M*N) identity matrices as
    much as possible, while the remaining elements are initialized to zeros":
    the identity is tiled ``D_mul // (M*N)`` times along ``D_mul`` and the
    remainder is zero.  Tiling also keeps the composed kernel's initial
    variance equal to a plain conv's, because ``W`` is initialised with fan-in
    ``C_in/groups * D_mul`` and ``W'`` sums ``D_mul // (M*N)`` of its blocks.

    Args:
        kernel_numel: ``M*N``, the number of kernel positions.
        d_mul: The depth multiplier, ``>= M*N``.
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape ``(M*N, D_mul)``.
    """
    if d_mul < kernel_numel:
        raise ValueError(f'D_mul must be >= M*N = {kernel_numel}, '
                         f'but got {d_mul}')
    repeats, remainder = divmod(d_mul, kernel_numel)
    eye = torch.eye(kernel_numel, dtype=dtype, device=device)
    blocks = [eye] * repeats
    if remainder:
        blocks.append(
            torch.zeros(kernel_numel, remainder, dtype=dtype, device=device))
    return torch.cat(blocks, dim=1)


# id(tensor) -> (weak reference, (version, data pointer, dtype), result).
# Not a WeakKeyDictionary: it compares keys with ==, which tensors answer
# elementwise.
_checked_identities: dict = {}


def is_tiled_identity(identity: Tensor) -> bool:
    """Whether ``identity`` is :func:`doconv_identity` of its shape (what
    the fused kernels add on the fly).  Checked once per tensor and version:
    layers pass the same buffer on every call."""
    state = (identity._version, identity.data_ptr(), identity.dtype)
    known = _checked_identities.get(id(identity))
    if known is not None and known[0]() is identity and known[1] == state:
        return known[2]
    result = bool(
        identity.dim() == 2 and identity.shape[1] >= identity.shape[0]
        and torch.equal(identity, doconv_identity(
            identity.shape[0], identity.shape[1], identity.dtype,
            identity.device)))
    key = id(identity)
    _checked_identities[key] = (weakref.ref(
        identity, lambda _, key=key: _checked_identities.pop(key, None)),
        state, result)
    return result


def fused_kernel_d(d_minus_identity: Tensor, identity: Tensor,
                   backend: str) -> Tuple[Tensor, bool]:
    """What the fused kernels of ``backend`` take for D, and whether they add
    the identity themselves: the C++ kernels take ``D - I`` when
    ``identity`` is the tiled identity (no D + I materialised), every other
    case gets ``D + I``."""
    if backend == 'cpp' and is_tiled_identity(identity):
        return d_minus_identity, True
    return d_minus_identity + identity, False  # broadcast over channels


def weight_for_kernel(kernel: Tensor, d_mul: int) -> Tensor:
    """The ``W`` of a DO-Conv layer that composes to ``kernel`` at D = I.

    With ``D_mul == M*N`` that is the kernel itself; with ``D_mul > M*N``
    (W of shape ``(C_out, C_in/groups, 1, D_mul)``) it is the kernel's
    ``M*N`` positions followed by zeros, which the tiled identity
    (:func:`doconv_identity`) composes back to the kernel.

    Args:
        kernel: A plain conv kernel ``(C_out, C_in/groups, M, N)``.
        d_mul: The layer's depth multiplier, ``>= M*N``.

    Returns:
        A new tensor, or ``kernel`` itself when ``D_mul == M*N``.
    """
    out_channels, in_per_group, kernel_h, kernel_w = kernel.shape
    kernel_numel = kernel_h * kernel_w
    if d_mul == kernel_numel:
        return kernel
    weight = kernel.new_zeros(out_channels, in_per_group, 1, d_mul)
    weight[..., :kernel_numel] = kernel.reshape(out_channels, in_per_group, 1,
                                                kernel_numel)
    return weight


class _ComposeKernel(torch.autograd.Function):
    """``W'[g, o, c, s] = sum_d W[g, o, c, d] * D[g, c, s, d]`` with GEMMs.

    The pure-PyTorch composition, used where the fused kernels
    (:mod:`mmdoconv.ops`) do not apply: tracing, other devices, or no build.

    The composition is one small GEMM per input channel ``(o, d) @ (d, s)``.
    Written as an einsum, PyTorch batches it as ``(s, d) @ (d, o)``, which
    runs several times slower on CPU, and its gradient for W comes back as a
    transposed view that AccumulateGrad and the optimizer then walk with
    strided loops.  Here each GEMM is batched over input channels with ``o``
    as rows, and the one layout change each way is an explicit copy into the
    ``(o, c, s)`` layout that conv2d and the optimizer want (conv2d would
    otherwise copy a strided kernel itself, more slowly).  Profiled on the
    512-channel 3x3 layer: forward + backward 13 ms -> about 5 ms on 2 CPU
    threads (docs/en/advanced_guides/performance.md).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, d_full: Tensor) -> Tensor:
        # weight: (g, o, c, d); d_full: (g, c, s, d)
        ctx.save_for_backward(weight, d_full)
        per_channel = torch.matmul(weight.transpose(1, 2),
                                   d_full.transpose(2, 3))  # (g, c, o, s)
        return per_channel.transpose(1, 2).contiguous()  # (g, o, c, s)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, d_full = ctx.saved_tensors
        grad_per_channel = grad.transpose(1, 2)  # (g, c, o, s), a view
        grad_weight = grad_d = None
        if ctx.needs_input_grad[0]:
            grad_weight = torch.matmul(grad_per_channel, d_full).transpose(
                1, 2).contiguous()  # (g, o, c, d), laid out like weight
        if ctx.needs_input_grad[1]:
            grad_d = torch.matmul(grad_per_channel.transpose(2, 3),
                                  weight.transpose(1, 2))  # (g, c, s, d)
        return grad_weight, grad_d


def compose_grouped(weight: Tensor, d_full: Tensor, groups: int) -> Tensor:
    """The pure-PyTorch composition in the fused kernels' layout.

    Args:
        weight: ``W``, shape ``(C_out, C_in/groups, D_mul)``.
        d_full: ``D`` (identity included), shape ``(C_in, M*N, D_mul)``.
        groups: Number of conv groups.

    Returns:
        ``W'``, shape ``(C_out, C_in/groups, M*N)``; the reference the fused
        kernels (:mod:`mmdoconv.ops`) are tested against.
    """
    out_channels, in_per_group, d_mul = weight.shape
    # Split both kernels by group so each output channel meets exactly the D
    # matrices of the input channels it reads.
    composed = _ComposeKernel.apply(
        weight.reshape(groups, out_channels // groups, in_per_group, d_mul),
        d_full.reshape(groups, in_per_group, d_full.shape[1], d_mul))
    return composed.reshape(out_channels, in_per_group, -1)


def compose_kernel(weight: Tensor, d_minus_identity: Tensor,
                   identity: Tensor, kernel_size: Tuple[int, int],
                   groups: int) -> Tensor:
    """Compose ``W' = (D'+I)^T o W`` into a plain conv kernel.

    Args:
        weight: ``W``, shape ``(C_out, C_in/groups, M, N)`` when
            ``D_mul == M*N`` or ``(C_out, C_in/groups, D_mul)``.
        d_minus_identity: ``D' = D - I``, shape ``(C_in, M*N, D_mul)``.
        identity: The identity part, shape ``(M*N, D_mul)``
            (see :func:`doconv_identity`).
        kernel_size: ``(M, N)``.
        groups: Number of conv groups; input channel ``g*C_in/groups + c``
            belongs to group ``g`` and owns row ``g*C_in/groups + c`` of ``D``.

    Returns:
        The composed kernel ``W'``, contiguous, shape
        ``(C_out, C_in/groups, M, N)``.  It comes from the fused kernel of
        the weight's device when one is available
        (:func:`~mmdoconv.ops.fused_compose.fused_backend`), else from
        batched GEMMs; both agree to round-off.
    """
    out_channels, in_per_group = weight.shape[:2]
    kernel_h, kernel_w = kernel_size
    d_mul = d_minus_identity.shape[-1]
    weight_rows = weight.reshape(out_channels, in_per_group, d_mul)
    backend = fused_backend(weight)
    if backend is not None:
        d, adds_identity = fused_kernel_d(d_minus_identity, identity, backend)
        composed = fused_compose(weight_rows, d, groups, backend,
                                 identity=adds_identity)
    else:
        # D + I is C_in*(M*N)*D_mul numbers, far fewer than W's
        # C_out*C_in*M*N: materialising it is cheaper than adding D's
        # product to W.
        composed = compose_grouped(weight_rows, d_minus_identity + identity,
                                   groups)
    return composed.reshape(out_channels, in_per_group, kernel_h, kernel_w)


def compose_any_kernel(weight: Tensor, d_minus_identity: Tensor,
                       identity: Tensor, kernel_size: Tuple[int, ...],
                       groups: int, transposed: bool = False) -> Tensor:
    """:func:`compose_kernel` for a conv of any kind: 1-D, 2-D, 3-D, plain
    or transposed.

    The composition only sees the kernel's ``K`` positions (``M*N`` in 2-D,
    the kernel's volume in general), so every kind composes as a 2-D kernel
    of ``K x 1`` positions.  A transposed conv's weight is
    ``(C_in, C_out/groups, *kernel)``: input channel ``i`` owns ``D[i]`` and
    the block ``W[i]`` of every output it feeds, which is the composition of
    the ``(C_out/groups, C_in, D_mul)`` weight as one group.

    Args:
        weight: ``W``, ``(A, B, *kernel_size)`` when ``D_mul == K`` or
            ``(A, B, 1, ..., 1, D_mul)``; ``A, B`` are ``C_out, C_in/groups``
            (``C_in, C_out/groups`` when ``transposed``).
        d_minus_identity: ``D - I``, ``(C_in, K, D_mul)``.
        identity: ``(K, D_mul)`` (:func:`doconv_identity`).
        kernel_size: The kernel's extents.
        groups: Number of conv groups.
        transposed: Whether ``weight`` is a transposed conv's.

    Returns:
        ``W'``, ``(A, B, *kernel_size)``.
    """
    first, second = weight.shape[:2]
    kernel_numel = d_minus_identity.shape[1]
    rows = weight.reshape(first, second, -1)
    if transposed:
        rows = rows.transpose(0, 1).contiguous()
        composed = compose_kernel(rows, d_minus_identity, identity,
                                  (kernel_numel, 1), 1)
        return composed.reshape(second, first, *kernel_size).transpose(0, 1)
    composed = compose_kernel(rows, d_minus_identity, identity,
                              (kernel_numel, 1), groups)
    return composed.reshape(first, second, *kernel_size)
