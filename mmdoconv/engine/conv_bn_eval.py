"""mmengine's ``efficient_conv_bn_eval`` Runner option for models with DO-Conv.

mmengine traces the listed modules with ``torch.fx.symbolic_trace`` and pairs
each BatchNorm with the conv module that feeds it.  The default tracer
traces *through* every module outside ``torch.nn``, so a :class:`DOConv2d`
shows up as a ``conv2d`` function call, and mmengine's pairing step looks
that call up as a module (``KeyError``).  Here the same graph transform runs
on a trace that keeps DO-Conv layers as modules (leaves), so each
DO-Conv + BN pair is found; the fused eval forward then hands
``DOConv2d._conv_forward`` the BN-scaled W, which composes with D as any
kernel it is handed (the per-output-channel scale commutes with D).
"""
from operator import attrgetter
from typing import List, Union

from mmengine.model.efficient_conv_bn_eval import \
    efficient_conv_bn_eval_graph_transform
from torch import fx, nn

from ..cnn.doconv import DOConv2d


class DOConvLeafTracer(fx.Tracer):
    """torch.fx's tracer, with DO-Conv layers kept as call_module nodes."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, DOConv2d) or super().is_leaf_module(
            module, qualified_name)


def turn_on_efficient_conv_bn_eval(model: nn.Module,
                                   modules: Union[List[str], str]) -> None:
    """mmengine's ``turn_on_efficient_conv_bn_eval``, tracing DO-Conv layers
    as modules.

    Args:
        model: The model (unwrapped).
        modules: Names of the sub-modules to transform (``['backbone']``).
    """
    for name in [modules] if isinstance(modules, str) else modules:
        module = attrgetter(name)(model)
        graph = DOConvLeafTracer().trace(module)
        fx_model = fx.GraphModule(module, graph,
                                  module.__class__.__name__)
        efficient_conv_bn_eval_graph_transform(fx_model)
        module.forward = fx_model.forward


__all__ = ['DOConvLeafTracer', 'turn_on_efficient_conv_bn_eval']
