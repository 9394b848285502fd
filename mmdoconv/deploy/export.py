"""ONNX export of folded OpenMMLab models, checked with onnxruntime.

The exported graph is the tensor part of the model, taking the preprocessed
(normalised, padded) batch as mmdeploy's end-to-end graphs do:

- segmentor: the decode head's logits;
- detector with an RPN: the backbone and neck features and the RPN head's
  raw class and box outputs, which hold every DO-Conv layer; the RoI stage's
  proposal NMS is data dependent and is mmdeploy's business;
- anything else: ``model(inputs, mode='tensor')``.
"""
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .fold import fold_doconv


def flatten_tensors(outputs) -> List[Tensor]:
    """The tensors of a nested tuple / list / dict output, in order."""
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for value in outputs.values() for t in flatten_tensors(value)]
    if isinstance(outputs, (list, tuple)):
        return [t for value in outputs for t in flatten_tensors(value)]
    return []


class TensorGraph(nn.Module):
    """An OpenMMLab model's exportable part: a batch in, a flat tuple out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor) -> Tuple[Tensor, ...]:
        model = self.model
        if hasattr(model, 'rpn_head') and hasattr(model, 'extract_feat'):
            features = model.extract_feat(inputs)
            rpn_outputs = model.rpn_head(features)
            return tuple(flatten_tensors(features) + flatten_tensors(rpn_outputs))
        if hasattr(model, 'decode_head') and hasattr(model, '_forward'):
            return tuple(flatten_tensors(model._forward(inputs)))
        return tuple(flatten_tensors(model(inputs, mode='tensor')))

    def output_names(self, inputs: Tensor) -> List[str]:
        with torch.no_grad():
            count = len(self(inputs))
        return [f'output_{i}' for i in range(count)]


@torch.no_grad()
def export_onnx(model: nn.Module, inputs: Tensor, path: str,
                opset_version: int = 17) -> int:
    """Fold ``model`` in place and export its tensor graph to ``path``.

    Returns:
        The number of DO-Conv layers folded.
    """
    folded = fold_doconv(model)
    graph = TensorGraph(model.eval()).eval()
    torch.onnx.export(
        graph, (inputs, ),
        path,
        input_names=['inputs'],
        output_names=graph.output_names(inputs),
        opset_version=opset_version,
        dynamo=False)
    return folded


def run_onnx(path: str, inputs: Tensor) -> List[np.ndarray]:
    """Run an exported graph with onnxruntime on the CPU."""
    import onnxruntime
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    return session.run(None, {'inputs': inputs.numpy()})


@torch.no_grad()
def max_abs_difference(model: nn.Module, path: str, inputs: Tensor) -> float:
    """Largest |PyTorch - onnxruntime| over every output of the graph."""
    expected = TensorGraph(model.eval())(inputs)
    actual = run_onnx(path, inputs)
    if len(expected) != len(actual):
        raise RuntimeError(f'the ONNX graph has {len(actual)} outputs, the '
                           f'PyTorch model {len(expected)}')
    return max(
        float(np.abs(e.numpy() - a).max()) for e, a in zip(expected, actual))


def node_histogram(path: str) -> dict:
    """``{op_type: count}`` of an ONNX graph's nodes."""
    import onnx
    from collections import Counter
    return dict(Counter(node.op_type for node in onnx.load(path).graph.node))


def dummy_inputs(shape: Sequence[int], seed: int = 0) -> Tensor:
    """A deterministic normalised batch of the given (N, C, H, W) shape."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)
