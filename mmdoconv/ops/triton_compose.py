"""The fused kernel composition on CUDA, as Triton kernels.

Same contract as the C++ extension (:mod:`mmdoconv.ops.extension`):
``compose_forward(weight, d_full, groups)`` and ``compose_backward(grad,
weight, d_full, groups, need_weight, need_d)`` with ``weight (C_out,
C_in/groups, D_mul)``, ``d_full (C_in, M*N, D_mul)`` and ``W'`` of shape
``(C_out, C_in/groups, M*N)``, float32 or float64.

Each program owns a tile of (output, input-channel) pairs and keeps the
tile's ``(M*N) x D_mul`` products in registers: W and W' are read and
written once, in their native layouts.  grad D sums over output channels; the
output range is split over programs that each write a partial sum (no
atomics, so the result does not depend on scheduling).

Triton's interpreter (``TRITON_INTERPRET=1``, set before triton is imported)
runs these kernels on CPU tensors, which is how the test suite checks them on
a machine without a GPU.
"""
import os
from typing import List, Optional

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch's CUDA wheels
    triton = tl = None


def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def triton_available(device: torch.device) -> str:
    """``''`` when the kernels can run on ``device`` here, else the reason.

    CUDA devices run them compiled; CPU tensors only through Triton's
    interpreter (``TRITON_INTERPRET=1`` when triton was imported).
    """
    if triton is None:
        return 'triton is not installed'
    if device.type == 'cuda':
        return '' if torch.cuda.is_available() else 'no CUDA device'
    if device.type == 'cpu':
        return '' if interpreting() else (
            "the Triton kernels run on CPU tensors only in Triton's "
            'interpreter (TRITON_INTERPRET=1)')
    return f'the Triton kernels do not run on {device.type!r} tensors'


if triton is not None:

    @triton.jit
    def _forward_kernel(w_ptr, d_ptr, out_ptr, out_per_group, in_per_group,
                        positions, d_mul, BLOCK_O: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
        # W'[o, c, s] = sum_d W[o, c, d] * D[g*Cg + c, s, d]
        group = tl.program_id(0)
        o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        s = tl.arange(0, BLOCK_S)
        o_ok = o < out_per_group
        c_ok = c < in_per_group
        s_ok = s < positions
        row = group * out_per_group + o  # global output channel
        channel = group * in_per_group + c
        w_base = (row[:, None] * in_per_group + c[None, :]) * d_mul
        d_base = (channel[:, None] * positions + s[None, :]) * d_mul
        oc_ok = o_ok[:, None] & c_ok[None, :]
        cs_ok = c_ok[:, None] & s_ok[None, :]
        acc = tl.zeros((BLOCK_O, BLOCK_C, BLOCK_S), dtype=tl.float32)
        if d_ptr.dtype.element_ty == tl.float64:
            acc = acc.to(tl.float64)
        for d in range(0, d_mul):
            w = tl.load(w_ptr + w_base + d, mask=oc_ok, other=0.0)
            dd = tl.load(d_ptr + d_base + d, mask=cs_ok, other=0.0)
            acc += w[:, :, None] * dd[None, :, :]
        out_index = (row[:, None, None] * in_per_group
                     + c[None, :, None]) * positions + s[None, None, :]
        tl.store(out_ptr + out_index, acc,
                 mask=oc_ok[:, :, None] & s_ok[None, None, :])

    @triton.jit
    def _grad_weight_kernel(g_ptr, d_ptr, gw_ptr, out_per_group,
                            in_per_group, positions, d_mul,
                            BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
                            BLOCK_D: tl.constexpr):
        # gW[o, c, d] = sum_s G[o, c, s] * D[g*Cg + c, s, d]
        group = tl.program_id(0)
        o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        d = tl.arange(0, BLOCK_D)
        o_ok = o < out_per_group
        c_ok = c < in_per_group
        d_ok = d < d_mul
        row = group * out_per_group + o
        channel = group * in_per_group + c
        g_base = (row[:, None] * in_per_group + c[None, :]) * positions
        d_base = channel[:, None] * positions * d_mul + d[None, :]
        oc_ok = o_ok[:, None] & c_ok[None, :]
        cd_ok = c_ok[:, None] & d_ok[None, :]
        acc = tl.zeros((BLOCK_O, BLOCK_C, BLOCK_D), dtype=tl.float32)
        if d_ptr.dtype.element_ty == tl.float64:
            acc = acc.to(tl.float64)
        for s in range(0, positions):
            g = tl.load(g_ptr + g_base + s, mask=oc_ok, other=0.0)
            dd = tl.load(d_ptr + d_base + s * d_mul, mask=cd_ok, other=0.0)
            acc += g[:, :, None] * dd[None, :, :]
        gw_index = (row[:, None, None] * in_per_group
                    + c[None, :, None]) * d_mul + d[None, None, :]
        tl.store(gw_ptr + gw_index, acc,
                 mask=oc_ok[:, :, None] & d_ok[None, None, :])

    @triton.jit
    def _grad_d_kernel(g_ptr, w_ptr, partial_ptr, out_per_group,
                       in_per_group, positions, d_mul, rows_per_split,
                       BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_D: tl.constexpr):
        # partial[split, g*Cg + c, s, d] = sum over this split's outputs o of
        # G[o, c, s] * W[o, c, d]
        group = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        split = tl.program_id(2)
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        c_ok = c < in_per_group
        cs_ok = c_ok[:, None] & (s < positions)[None, :]
        cd_ok = c_ok[:, None] & (d < d_mul)[None, :]
        acc = tl.zeros((BLOCK_C, BLOCK_S, BLOCK_D), dtype=tl.float32)
        if w_ptr.dtype.element_ty == tl.float64:
            acc = acc.to(tl.float64)
        start = split * rows_per_split
        stop = tl.minimum(start + rows_per_split, out_per_group)
        for o in range(start, stop):
            row = group * out_per_group + o
            g = tl.load(g_ptr + (row * in_per_group + c[:, None]) * positions
                        + s[None, :], mask=cs_ok, other=0.0)
            w = tl.load(w_ptr + (row * in_per_group + c[:, None]) * d_mul
                        + d[None, :], mask=cd_ok, other=0.0)
            acc += g[:, :, None] * w[:, None, :]
        channel = group * in_per_group + c
        num_channels = tl.num_programs(0) * in_per_group
        index = ((split * num_channels + channel[:, None, None]) * positions
                 + s[None, :, None]) * d_mul + d[None, None, :]
        tl.store(partial_ptr + index, acc,
                 mask=cs_ok[:, :, None] & (d < d_mul)[None, None, :])


def _blocks(in_per_group: int, positions: int, d_mul: int):
    block_s = triton.next_power_of_2(positions)
    block_d = triton.next_power_of_2(d_mul)
    # About 4k accumulators per program.
    block_c = min(triton.next_power_of_2(in_per_group),
                  max(1, 4096 // (16 * max(block_s, block_d))))
    return 16, block_c, block_s, block_d


def _check(weight: Tensor, d_full: Tensor, groups: int) -> None:
    if triton is None:
        raise RuntimeError('triton is not installed')
    if weight.dim() != 3 or d_full.dim() != 3:
        raise ValueError('weight must be (C_out, C_in/groups, D_mul) and D '
                         '(C_in, M*N, D_mul)')
    if weight.shape[0] % groups or d_full.shape[0] != weight.shape[1] * groups \
            or d_full.shape[2] != weight.shape[2]:
        raise ValueError(f'D {tuple(d_full.shape)} does not match W '
                         f'{tuple(weight.shape)} with groups={groups}')


def compose_forward(weight: Tensor, d_full: Tensor, groups: int) -> Tensor:
    """``W'`` of shape ``(C_out, C_in/groups, M*N)``."""
    _check(weight, d_full, groups)
    weight, d_full = weight.contiguous(), d_full.contiguous()
    out_channels, in_per_group, d_mul = weight.shape
    positions = d_full.shape[1]
    out_per_group = out_channels // groups
    block_o, block_c, block_s, _ = _blocks(in_per_group, positions, d_mul)
    out = torch.empty(out_channels, in_per_group, positions,
                      dtype=weight.dtype, device=weight.device)
    grid = (groups, triton.cdiv(out_per_group, block_o),
            triton.cdiv(in_per_group, block_c))
    _forward_kernel[grid](weight, d_full, out, out_per_group, in_per_group,
                          positions, d_mul, BLOCK_O=block_o, BLOCK_C=block_c,
                          BLOCK_S=block_s)
    return out


def compose_backward(grad: Tensor, weight: Tensor, d_full: Tensor,
                     groups: int, need_weight: bool,
                     need_d: bool) -> List[Optional[Tensor]]:
    """``[grad W, grad D]`` (``None`` where not needed)."""
    _check(weight, d_full, groups)
    grad = grad.contiguous().to(weight.dtype)
    weight, d_full = weight.contiguous(), d_full.contiguous()
    out_channels, in_per_group, d_mul = weight.shape
    positions = d_full.shape[1]
    out_per_group = out_channels // groups
    block_o, block_c, block_s, block_d = _blocks(in_per_group, positions,
                                                 d_mul)
    grad_weight = grad_d = None
    if need_weight:
        grad_weight = torch.empty_like(weight)
        grid = (groups, triton.cdiv(out_per_group, block_o),
                triton.cdiv(in_per_group, block_c))
        _grad_weight_kernel[grid](grad, d_full, grad_weight, out_per_group,
                                  in_per_group, positions, d_mul,
                                  BLOCK_O=block_o, BLOCK_C=block_c,
                                  BLOCK_D=block_d)
    if need_d:
        # Enough programs to fill a GPU; each sums at least 16 outputs.
        c_blocks = groups * triton.cdiv(in_per_group, block_c)
        splits = max(1, min(triton.cdiv(out_per_group, 16),
                            triton.cdiv(512, c_blocks)))
        rows_per_split = triton.cdiv(out_per_group, splits)
        splits = triton.cdiv(out_per_group, rows_per_split)
        partial = torch.zeros(splits, *d_full.shape, dtype=weight.dtype,
                              device=weight.device)
        grid = (groups, triton.cdiv(in_per_group, block_c), splits)
        _grad_d_kernel[grid](grad, weight, partial, out_per_group,
                             in_per_group, positions, d_mul, rows_per_split,
                             BLOCK_C=block_c, BLOCK_S=block_s,
                             BLOCK_D=block_d)
        grad_d = partial.sum(0)
    return [grad_weight, grad_d]
