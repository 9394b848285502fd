"""A DO-Conv training forward that does not keep ``W'`` for the backward.

A plain conv keeps its input and its kernel for the backward.  For DO-Conv
the kernel is ``W' = D^T o W``, a new tensor as large as ``W`` that nothing
else holds: kept by autograd, it stays alive from the layer's forward to its
backward, so a network trained with DO-Conv holds one extra copy of every
DO-Conv kernel at the peak of the step (the end of the forward).  For
DeepLabv3's task stage (3x3 convs with 2048-2560 inputs and 512 outputs) that
was 2-7 % of the step's peak memory.  :class:`RecomposingConv2d` keeps ``W``
and ``D`` (which the layer holds anyway) and composes ``W'`` again in the
backward: one more composition per layer and step, which costs time where
the conv is cheap next to its kernel (small maps, many channels;
docs/en/advanced_guides/performance.md has both).

:func:`recomposing_conv2d` is the entry point: on CPU, in float32/64 without
autocast, it runs the C++ extension's autograd node of the same function
(one extension call per layer and pass instead of the Python glue of
:class:`RecomposingConv2d`, which costs a network of many small layers
several per cent of its step); everywhere else the Python function.
"""
import contextlib
import threading
from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.extension import load_extension
from ..ops.fused_compose import (compose_rows, compose_rows_backward,
                                 fused_backend)
from .compose import (compose_any_kernel, compose_kernel, fused_kernel_d,
                      is_tiled_identity)


_workspaces = threading.local()


def _kernel_memory(weight: Tensor, numel: int) -> Optional[Tensor]:
    """Memory for a ``W'`` that lives only inside one forward or backward
    call, reused by every DO-Conv layer of the thread (CPU, float32/64).

    The recomposing path makes a W' twice per layer and step and drops it
    at once.  PyTorch's CPU allocator (glibc) can hand a tensor of several
    MB back to the OS when it is freed, and each new W' then faults its
    pages in again; on CUDA the caching allocator already reuses the
    memory.  The buffer grows to the thread's
    largest W' and stays (one kernel's worth, next to the one per layer that
    keeping W' would hold at the peak).
    """
    if weight.device.type != 'cpu' or weight.dtype not in (torch.float32,
                                                           torch.float64):
        return None
    buffers = getattr(_workspaces, 'buffers', None)
    if buffers is None:
        buffers = _workspaces.buffers = {}
    buffer = buffers.get(weight.dtype)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[weight.dtype] = torch.empty(numel,
                                                     dtype=weight.dtype)
    return buffer


def _lower_precision(tensor: Optional[Tensor],
                     dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    # What autocast does to conv2d's arguments: floating tensors other than
    # float64 go to the autocast dtype.
    if (tensor is None or dtype is None or not tensor.is_floating_point()
            or tensor.dtype == torch.float64):
        return tensor
    return tensor.to(dtype)


_python_only = False


@contextlib.contextmanager
def recompose_in_python() -> Iterator[None]:
    """Inside the block every recomposing 2-D layer runs
    :class:`RecomposingConv2d` (Python) even where the C++ node applies:
    tests and benchmarks compare both in one process."""
    global _python_only
    previous, _python_only = _python_only, True
    try:
        yield
    finally:
        _python_only = previous


def recomposing_conv2d(input: Tensor, weight: Tensor,
                       d_minus_identity: Tensor, identity: Tensor,
                       bias: Optional[Tensor], kernel_size: Tuple[int, int],
                       stride: Sequence[int], padding: Sequence[int],
                       dilation: Sequence[int], groups: int,
                       autocast_dtype: Optional[torch.dtype]) -> Tensor:
    """``conv2d(input, compose(W, D))`` that recomposes ``W'`` in backward.

    Arguments as for :class:`RecomposingConv2d`.  Where the C++ node applies
    (:func:`_cpp_node`) it runs instead: the same kernels, the same memory
    reuse and the same results, bit for bit (``tests/test_recomposing_conv.py``
    runs both), in one extension call per pass.
    """
    extension = _cpp_node(input, weight, d_minus_identity, identity, bias,
                          autocast_dtype)
    if extension is not None:
        return extension.recomposing_conv2d(input, weight, d_minus_identity,
                                            bias, kernel_size, stride,
                                            padding, dilation, groups)
    return RecomposingConv2d.apply(input, weight, d_minus_identity, identity,
                                   bias, kernel_size, stride, padding,
                                   dilation, groups, autocast_dtype)


_NODE_DTYPES = (torch.float32, torch.float64)


def _cpp_node(input: Tensor, weight: Tensor, d_minus_identity: Tensor,
              identity: Tensor, bias: Optional[Tensor],
              autocast_dtype: Optional[torch.dtype]):
    """The extension module when its ``recomposing_conv2d`` node computes
    this call (CPU tensors of one dtype, float32/64, no autocast, the tiled
    identity, the C++ backend chosen), else None."""
    dtype = weight.dtype
    if (_python_only or autocast_dtype is not None
            or dtype not in _NODE_DTYPES or input.dtype != dtype
            or d_minus_identity.dtype != dtype
            or (bias is not None and bias.dtype != dtype)
            or input.device.type != 'cpu'
            or fused_backend(weight, tracing_checked=True) != 'cpp'
            or not is_tiled_identity(identity)):
        return None
    return load_extension()[0]


class RecomposingConv2d(torch.autograd.Function):
    """``conv2d(input, compose(W, D))`` that recomposes ``W'`` in backward.

    The forward and the gradients are those of
    ``F.conv2d(input, compose_kernel(weight, D, I, ...), bias, ...)``,
    autocast included (the composition runs in the parameters' dtype, the
    conv in the autocast dtype, as :func:`~mmdoconv.cnn.doconv.compose_weight`
    does).  Double backward (``create_graph=True``) is supported: there the
    backward recomputes the forward differentiably.

    Args (of ``apply``):
        input: ``(B, C_in, H, W)``, already padded for non-zero padding modes.
        weight: ``W`` in the layer's layout.
        d_minus_identity: ``D - I``, ``(C_in, M*N, D_mul)``.
        identity: ``(M*N, D_mul)``.
        bias: ``(C_out,)`` or None.
        kernel_size, stride, padding, dilation: int pairs.
        groups: Number of conv groups.
        autocast_dtype: The dtype the conv runs in under autocast, or None.
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, d_minus_identity: Tensor,
                identity: Tensor, bias: Optional[Tensor],
                kernel_size: Tuple[int, int], stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], groups: int,
                autocast_dtype: Optional[torch.dtype]) -> Tensor:
        ctx.conv_args = (kernel_size, stride, padding, dilation, groups,
                         autocast_dtype)
        conv_input = _lower_precision(input, autocast_dtype)
        output = _composed_conv(conv_input, weight, d_minus_identity,
                                identity, bias, ctx.conv_args,
                                reuse_memory=True)
        # The conv input in the dtype the conv ran in (as autocast's conv
        # keeps it); W and D instead of W'.
        ctx.save_for_backward(conv_input, weight, d_minus_identity, identity,
                              bias)
        ctx.input_dtype = input.dtype
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        conv_input, weight, d_minus_identity, identity, bias = \
            ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: differentiate a differentiable recomputation
            # (its graph reaches the saved inputs' own graphs).
            output = _composed_conv(conv_input, weight, d_minus_identity,
                                    identity, bias, ctx.conv_args)
            results = _differentiate(
                output, (conv_input, weight, d_minus_identity, bias),
                [ctx.needs_input_grad[i] for i in (0, 1, 2, 4)], grad_output)
        else:
            results = _backward(grad_output, conv_input, weight,
                                d_minus_identity, identity, bias,
                                ctx.needs_input_grad, ctx.conv_args)
        grad_input, grad_weight, grad_d, grad_bias = results
        if grad_input is not None:
            grad_input = grad_input.to(ctx.input_dtype)
        return (grad_input, grad_weight, grad_d, None, grad_bias, None, None,
                None, None, None, None)


def _differentiate(output: Tensor, inputs: Sequence[Optional[Tensor]],
                   needs: Sequence[bool], grad_output: Tensor) -> list:
    """Gradients of a differentiable recomputation of the forward, for
    ``create_graph=True`` (their graph reaches the inputs' own graphs);
    None where not needed."""
    wanted = [tensor for tensor, need in zip(inputs, needs) if need]
    grads = iter(torch.autograd.grad(output, wanted, grad_output,
                                     create_graph=True))
    return [next(grads) if need else None for need in needs]


def _composed_conv(conv_input: Tensor, weight: Tensor,
                   d_minus_identity: Tensor, identity: Tensor,
                   bias: Optional[Tensor], conv_args: tuple,
                   reuse_memory: bool = False) -> Tensor:
    """``conv2d(conv_input, W')``: composition in the parameters' dtype, the
    conv in the autocast dtype (``conv_input`` is already in it).

    ``reuse_memory`` (no autograd graph wanted): the fused kernel writes W'
    into the thread's reusable memory (:func:`_kernel_memory`).
    """
    (kernel_size, stride, padding, dilation, groups,
     autocast_dtype) = conv_args
    device_type = conv_input.device.type
    # Entering autocast costs microseconds per layer: only where it is on.
    with torch.autocast(device_type, enabled=False) \
            if torch.is_autocast_enabled(device_type) \
            else contextlib.nullcontext():
        backend = fused_backend(weight, tracing_checked=True) \
            if reuse_memory else None
        if backend is not None:
            kernel = _compose_in_memory(
                weight, *fused_kernel_d(d_minus_identity, identity, backend),
                kernel_size, groups, backend)
        else:
            kernel = compose_kernel(weight, d_minus_identity, identity,
                                    kernel_size, groups)
        return F.conv2d(conv_input, _lower_precision(kernel, autocast_dtype),
                        _lower_precision(bias, autocast_dtype), stride,
                        padding, dilation, groups)


def _compose_in_memory(weight: Tensor, d: Tensor, adds_identity: bool,
                       kernel_size: Tuple[int, int], groups: int,
                       backend: str) -> Tensor:
    """``W'`` from the fused kernel, written into :func:`_kernel_memory`
    where there is one (CPU), without autograd; ``d, adds_identity`` as
    :func:`~mmdoconv.cnn.compose.fused_kernel_d` gives them."""
    out_channels, in_per_group = weight.shape[:2]
    rows = weight.reshape(out_channels, in_per_group, d.shape[-1])
    memory = _kernel_memory(
        weight, out_channels * in_per_group * kernel_size[0] * kernel_size[1])
    return compose_rows(rows, d, groups, backend, out=memory,
                        identity=adds_identity).reshape(
                            out_channels, in_per_group, *kernel_size)


def _recompose(weight: Tensor, d_minus_identity: Tensor, identity: Tensor,
               kernel_size: Tuple[int, int], groups: int, need_weight: bool,
               need_d: bool,
               need_kernel: bool = True) -> Tuple[Optional[Tensor], Callable]:
    """``W'`` again, and a function from grad W' to ``(grad W, grad D)``.

    The fused kernels are called directly (no autograd graph for one
    backward step); the pure-PyTorch composition differentiates a small
    graph of its own.  With ``need_kernel=False`` the fused path composes
    nothing and returns None for ``W'`` (its gradients read only ``W``, ``D``
    and grad W').
    """
    out_channels, in_per_group = weight.shape[:2]
    rows = weight.reshape(out_channels, in_per_group,
                          d_minus_identity.shape[-1])
    # Only RecomposingConv2d's backward gets here: never under TorchScript
    # or ONNX tracing (the layer does not recompose while they record).
    backend = fused_backend(weight, tracing_checked=True)
    if backend is not None:
        d, adds_identity = fused_kernel_d(d_minus_identity, identity, backend)
        kernel = _compose_in_memory(weight, d, adds_identity, kernel_size,
                                    groups, backend) if need_kernel else None

        def gradients(grad_kernel: Tensor):
            # grad W' is this backward's own tensor: grad W may take its
            # memory.  (grad D is grad of D - I: the identity is constant.)
            grad_rows, grad_d = compose_rows_backward(
                grad_kernel.reshape(out_channels, in_per_group, -1), rows,
                d, groups, backend, need_weight, need_d, in_place=True,
                identity=adds_identity)
            if grad_rows is not None:
                grad_rows = grad_rows.reshape(weight.shape)
            return grad_rows, grad_d

        return kernel, gradients
    with torch.enable_grad():
        weight_leaf = weight.detach().requires_grad_(need_weight)
        d_leaf = d_minus_identity.detach().requires_grad_(need_d)
        kernel = compose_kernel(weight_leaf, d_leaf, identity, kernel_size,
                                groups)

    def gradients(grad_kernel: Tensor):
        leaves = [leaf for leaf, need in ((weight_leaf, need_weight),
                                          (d_leaf, need_d)) if need]
        grads = iter(torch.autograd.grad(kernel, leaves, grad_kernel))
        return (next(grads) if need_weight else None,
                next(grads) if need_d else None)

    return kernel.detach(), gradients


def _backward(grad_output: Tensor, conv_input: Tensor, weight: Tensor,
              d_minus_identity: Tensor, identity: Tensor,
              bias: Optional[Tensor], needs_input_grad: Sequence[bool],
              conv_args: tuple) -> list:
    """The gradients without a graph: conv backward against the recomposed
    kernel, then the composition's own backward for W and D."""
    (kernel_size, stride, padding, dilation, groups,
     autocast_dtype) = conv_args
    need_input, need_weight, need_d, _, need_bias = needs_input_grad[:5]
    need_kernel = need_weight or need_d
    kernel, compose_gradients = _recompose(weight, d_minus_identity,
                                           identity, kernel_size, groups,
                                           need_weight, need_d, need_input)
    kernel_dtype = weight.dtype
    if kernel is None:
        # No input gradient (a stem fed the image, the first layer after a
        # frozen stage): the conv's weight gradient reads only the input and
        # grad_output, so W' is not composed again and the conv gets a
        # stand-in of its shape whose values it never reads: W itself where
        # the shapes agree (D_mul = M*N).  (The expanded one-element tensor
        # torch.nn.grad.conv2d_weight passes is materialised: 1.3-1.8 ms more
        # per call at 512 channels, 7x7, on a 2-core CPU.)
        kernel_shape = (weight.shape[0], weight.shape[1], *kernel_size)
        conv_dtype = _lower_precision(weight[:0], autocast_dtype).dtype
        if conv_dtype == weight.dtype and weight[0, 0].numel() == \
                kernel_size[0] * kernel_size[1]:
            kernel = weight.reshape(kernel_shape)
        else:
            kernel = weight.new_empty(kernel_shape, dtype=conv_dtype)
    grad_input, grad_kernel, grad_bias = torch.ops.aten.convolution_backward(
        grad_output.to(conv_input.dtype), conv_input,
        _lower_precision(kernel, autocast_dtype),
        None if bias is None else [bias.shape[0]], list(stride),
        list(padding), list(dilation), False, [0, 0], groups,
        [need_input, need_kernel, need_bias and bias is not None])
    # W' is done with: freed before grad W (as large) is allocated, the
    # allocator can hand its memory straight over instead of returning it
    # to the OS and faulting fresh pages in.
    del kernel
    grad_weight = grad_d = None
    if need_kernel:
        grad_weight, grad_d = compose_gradients(grad_kernel.to(kernel_dtype))
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return [grad_input if need_input else None, grad_weight, grad_d,
            grad_bias]


class RecomposingConvNd(torch.autograd.Function):
    """:class:`RecomposingConv2d` for every other conv kind (1-D, 3-D and
    transposed convs): ``convolution(input, compose(W, D))`` without keeping
    ``W'`` for the backward.

    The backward composes ``W'`` again through
    :func:`~mmdoconv.cnn.compose.compose_any_kernel` (fused kernels where
    they apply, with autograd for grad W and grad D) and runs the conv's
    backward with ``aten.convolution_backward``, which serves every kind.
    Autocast and double backward behave as in :class:`RecomposingConv2d`.

    Args (of ``apply``):
        input: ``(B, C_in, *spatial)``, already padded for non-zero padding
            modes.
        weight: ``W`` in the layer's layout.
        d_minus_identity: ``D - I``, ``(C_in, K, D_mul)``.
        identity: ``(K, D_mul)``.
        bias: ``(C_out,)`` or None.
        conv_args: ``(kernel_size, stride, padding, dilation, transposed,
            output_padding, groups)``, int tuples but for ``transposed``
            (bool) and ``groups`` (int).
        autocast_dtype: The dtype the conv runs in under autocast, or None.
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, d_minus_identity: Tensor,
                identity: Tensor, bias: Optional[Tensor], conv_args: tuple,
                autocast_dtype: Optional[torch.dtype]) -> Tensor:
        ctx.conv_args = conv_args
        ctx.autocast_dtype = autocast_dtype
        conv_input = _lower_precision(input, autocast_dtype)
        output = _composed_conv_nd(conv_input, weight, d_minus_identity,
                                   identity, bias, conv_args, autocast_dtype)
        ctx.save_for_backward(conv_input, weight, d_minus_identity, identity,
                              bias)
        ctx.input_dtype = input.dtype
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        conv_input, weight, d_minus_identity, identity, bias = \
            ctx.saved_tensors
        needs = [ctx.needs_input_grad[i] for i in (0, 1, 2, 4)]
        if torch.is_grad_enabled():  # create_graph=True
            output = _composed_conv_nd(conv_input, weight, d_minus_identity,
                                       identity, bias, ctx.conv_args,
                                       ctx.autocast_dtype)
            results = _differentiate(
                output, (conv_input, weight, d_minus_identity, bias), needs,
                grad_output)
        else:
            results = _backward_nd(grad_output, conv_input, weight,
                                   d_minus_identity, identity, bias, needs,
                                   ctx.conv_args, ctx.autocast_dtype)
        grad_input, grad_weight, grad_d, grad_bias = results
        if grad_input is not None:
            grad_input = grad_input.to(ctx.input_dtype)
        return grad_input, grad_weight, grad_d, None, grad_bias, None, None


def _composed_conv_nd(conv_input: Tensor, weight: Tensor,
                      d_minus_identity: Tensor, identity: Tensor,
                      bias: Optional[Tensor], conv_args: tuple,
                      autocast_dtype: Optional[torch.dtype]) -> Tensor:
    (kernel_size, stride, padding, dilation, transposed, output_padding,
     groups) = conv_args
    device_type = conv_input.device.type
    with torch.autocast(device_type, enabled=False):
        kernel = compose_any_kernel(weight, d_minus_identity, identity,
                                    kernel_size, groups, transposed)
        return torch.ops.aten.convolution(
            conv_input, _lower_precision(kernel, autocast_dtype),
            _lower_precision(bias, autocast_dtype), list(stride),
            list(padding), list(dilation), transposed, list(output_padding),
            groups)


def _backward_nd(grad_output: Tensor, conv_input: Tensor, weight: Tensor,
                 d_minus_identity: Tensor, identity: Tensor,
                 bias: Optional[Tensor], needs: Sequence[bool],
                 conv_args: tuple,
                 autocast_dtype: Optional[torch.dtype]) -> list:
    """The gradients without a graph around the conv: W' recomposed (with
    a small graph of its own for grad W and grad D), then the conv's
    backward."""
    (kernel_size, stride, padding, dilation, transposed, output_padding,
     groups) = conv_args
    need_input, need_weight, need_d, need_bias = needs
    with torch.enable_grad():
        weight_leaf = weight.detach().requires_grad_(need_weight)
        d_leaf = d_minus_identity.detach().requires_grad_(need_d)
        kernel = compose_any_kernel(weight_leaf, d_leaf, identity,
                                    kernel_size, groups, transposed)
    grad_input, grad_kernel, grad_bias = torch.ops.aten.convolution_backward(
        grad_output.to(conv_input.dtype), conv_input,
        _lower_precision(kernel.detach(), autocast_dtype),
        None if bias is None else [bias.shape[0]], list(stride),
        list(padding), list(dilation), transposed, list(output_padding),
        groups, [need_input, need_weight or need_d,
                 need_bias and bias is not None])
    grad_weight = grad_d = None
    if need_weight or need_d:
        leaves = [leaf for leaf, need in ((weight_leaf, need_weight),
                                          (d_leaf, need_d)) if need]
        grads = iter(torch.autograd.grad(kernel, leaves,
                                         grad_kernel.to(kernel.dtype)))
        grad_weight = next(grads) if need_weight else None
        grad_d = next(grads) if need_d else None
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return [grad_input if need_input else None, grad_weight, grad_d,
            grad_bias]
