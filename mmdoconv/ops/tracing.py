"""Whether a tracer or compiler is recording the current forward.

One definition for the layer and the kernel dispatch: under a tracer the
composition must be pure PyTorch ops (an opaque extension call or a Python
``autograd.Function`` would end the graph), and the layer's eval cache keys
(version counters, data pointers) are not available on proxies.
"""
import torch
from torch.fx import _symbolic_trace

# torch >= 2.6 warns on is_fx_tracing() (true under FX and torch.export);
# ask without the warning where torch has the quiet variant.
_is_fx_symbolic_tracing = getattr(_symbolic_trace, 'is_fx_symbolic_tracing',
                                  _symbolic_trace.is_fx_tracing)


def is_capturing_graph() -> bool:
    """FX symbolic tracing, ``torch.compile`` or ``torch.export``: the
    tensors may be proxies or fakes."""
    return _is_fx_symbolic_tracing() or torch.compiler.is_compiling()


def is_tracing() -> bool:
    """Any tracer: those of :func:`is_capturing_graph`, TorchScript tracing
    and scripting, and ONNX export."""
    return (is_capturing_graph() or torch.jit.is_tracing()
            or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())
