"""ONNX export of folded OpenMMLab models, checked with onnxruntime.

The exported graph takes the preprocessed (normalised, padded) batch, as
mmdeploy's end-to-end graphs do, and returns what the model's
``mode='tensor'`` forward returns, flattened to a tuple of tensors.  Nothing
here knows a model family.

Some tensor-mode forwards cannot become a static graph: mmdet 3.3's two-stage
detectors select proposals with data-dependent NMS, and their box decoder's
ONNX branch imports ``mmdet.core``, which mmdet 3 no longer has (mmdeploy
rewrites both).  For such a model the exporter falls back to the *dense
part*, found without knowing the family: ``extract_feat`` and every other
child module that accepts its features (for Faster R-CNN: backbone, neck and
the RPN head's raw outputs, which hold every conv of the detector).  The
reason is reported, never hidden.

Every export is checked with onnxruntime on the traced batch **and** on a
second batch, so a graph that baked one input's data-dependent shapes into
constants is caught.
"""
import logging
import os.path as osp
from collections import Counter
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import Tensor, nn

from ..utils.compare import flatten_tensors, max_abs_difference
from .fold import fold_doconv

#: Children that :meth:`extract_feat` already runs, or that take no features.
_FEATURE_PRODUCERS = ('backbone', 'neck', 'data_preprocessor')


class TensorGraph(nn.Module):
    """An OpenMMLab model's exportable part: a batch in, a flat tuple out.

    Args:
        model (nn.Module): An OpenMMLab model (``forward(inputs, data_samples,
            mode)``) or any module taking one batch tensor.
        part (str): ``'tensor'`` for the ``mode='tensor'`` forward, ``'dense'``
            for ``extract_feat`` plus the children that take its features
            (see :func:`dense_heads`).
        data_samples (list, optional): Data samples passed to a tensor-mode
            forward that reads image meta.
    """

    def __init__(self, model: nn.Module, part: str = 'tensor',
                 data_samples: Optional[list] = None) -> None:
        super().__init__()
        if part not in ('tensor', 'dense'):
            raise ValueError(
                f"part must be 'tensor' or 'dense', but got {part!r}")
        self.model = model
        self.part = part
        self.data_samples = data_samples
        self.heads: List[str] = []

    def forward(self, inputs: Tensor) -> Tuple[Tensor, ...]:
        if self.part == 'tensor':
            return tuple(flatten_tensors(
                _tensor_forward(self.model, inputs, self.data_samples)))
        features = self.model.extract_feat(inputs)
        outputs = flatten_tensors(features)
        for name in self.heads:
            outputs += flatten_tensors(getattr(self.model, name)(features))
        return tuple(outputs)


def _tensor_forward(model: nn.Module, inputs: Tensor,
                    data_samples: Optional[list]):
    if isinstance(model, BaseModel):  # OpenMMLab's forward(inputs, samples,
        return model(inputs, data_samples, mode='tensor')  # mode)
    return model(inputs)  # any other module


@torch.no_grad()
def dense_heads(model: nn.Module, inputs: Tensor) -> List[str]:
    """Names of the children of ``model`` that accept ``extract_feat``'s output.

    Each candidate child is called once on the features; one that raises does
    not take them (for example a RoI head, which needs proposals) and is left
    out.  This is how the dense part is found without naming model families.
    """
    if not hasattr(model, 'extract_feat'):
        raise TypeError(f'{type(model).__name__} has no extract_feat, so its '
                        'dense part is not defined')
    features = model.extract_feat(inputs)
    names = []
    for name, child in model.named_children():
        if name in _FEATURE_PRODUCERS:
            continue
        try:
            outputs = child(features)
        except Exception:  # noqa: BLE001 - any failure means "not a taker"
            continue
        if flatten_tensors(outputs):
            names.append(name)
    return names


def _export(graph: TensorGraph, inputs: Tensor, path: str,
               opset_version: int) -> None:
    with torch.no_grad():
        graph.num_outputs = len(graph(inputs))
    if not graph.num_outputs:
        raise RuntimeError('the forward returns no tensors')
    torch.onnx.export(
        graph, (inputs, ),
        path,
        input_names=['inputs'],
        output_names=[f'output_{i}' for i in range(graph.num_outputs)],
        opset_version=opset_version,
        dynamo=False)


def export_onnx(model: nn.Module,
                inputs: Tensor,
                path: str,
                opset_version: int = 17,
                part: Optional[str] = None,
                data_samples: Optional[list] = None,
                log: Callable[[str], None] = None) -> TensorGraph:
    """Fold ``model`` in place and export its tensor graph to ``path``.

    Args:
        model (nn.Module): The model; DO-Conv layers are folded first.
        inputs (Tensor): A preprocessed batch.
        path (str): Where the ``.onnx`` file goes.
        opset_version (int): ONNX opset.
        part (str, optional): ``'tensor'`` or ``'dense'`` (see
            :class:`TensorGraph`); None tries ``'tensor'`` first and falls back
            to ``'dense'`` with the reason logged.
        data_samples (list, optional): The batch's data samples, for
            tensor-mode forwards that read image meta (see
            :func:`example_data_samples`).
        log (callable, optional): Where the fallback's reason goes.

    Returns:
        TensorGraph: The exported graph module, with ``folded`` (the number of
        DO-Conv layers folded), ``num_outputs`` and ``fallback_reason`` set.
    """
    log = log or (lambda msg: print_log(msg, 'current', logging.WARNING))
    folder = osp.dirname(osp.abspath(path))
    if not osp.isdir(folder):
        raise FileNotFoundError(
            f'the output folder {folder!r} of {path!r} does not exist')
    folded = fold_doconv(model)
    model.eval()
    reason = None
    graph = None
    if part in (None, 'tensor'):
        # In eval mode like the model: torch.onnx.export restores the
        # exported module's own mode afterwards, recursively, and a new
        # module's is train (which would put the caller's model in train
        # mode and let BatchNorm update its statistics).
        graph = TensorGraph(model, 'tensor', data_samples).eval()
        try:
            _export(graph, inputs, path, opset_version)
        except OSError:  # writing the file: not a property of the forward
            raise
        except Exception as error:  # noqa: BLE001 - reported, then fallback
            if part == 'tensor':
                raise
            reason = (f"the mode='tensor' forward of {type(model).__name__} "
                      f'cannot be exported ({type(error).__name__}: '
                      f'{str(error).splitlines()[0] if str(error) else ""})')
            graph = None
    if graph is None:
        graph = TensorGraph(model, 'dense').eval()
        graph.heads = dense_heads(model, inputs)
        if reason:
            log(f'{reason}; exported its dense part instead: extract_feat'
                + ''.join(f' + {name}' for name in graph.heads))
        _export(graph, inputs, path, opset_version)
    graph.folded = folded
    graph.opset_version = opset_version
    graph.fallback_reason = reason
    return graph


#: Values for the meta keys OpenMMLab's packing transforms ask for.
_META_DEFAULTS = dict(
    img_id=0, img_path='inputs.png', seg_map_path=None, flip=False,
    flip_direction=None, reduce_zero_label=False, scale_factor=(1.0, 1.0))


def pack_sample(pack, img, **fields) -> dict:
    """Run a packing transform (``PackDetInputs``, ``PackSegInputs``,
    ``PackInputs``, ...) on one HWC image and ``fields``, filling the meta
    keys it asks for with an unscaled, unflipped image's values."""
    height, width = img.shape[:2]
    known = dict(_META_DEFAULTS, ori_shape=(height, width),
                 img_shape=(height, width), pad_shape=(height, width))
    results = dict(fields, img=img)
    for key in getattr(pack, 'meta_keys', ()):
        if key in known and key not in results:
            results[key] = known[key]
    return pack(results)


def example_data_samples(cfg, inputs: Tensor) -> Optional[list]:
    """Data samples for ``inputs`` as the config's test pipeline packs them.

    The pipeline's last transform packs an image of the batch's size, so the
    samples have the class and meta fields the model's own test path gives
    it.  None when the config has no test pipeline.
    """
    from mmengine.registry import TRANSFORMS, DefaultScope
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get(
        'pipeline') or cfg.get('test_pipeline')
    if not pipeline:
        return None
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        pack = TRANSFORMS.build(pipeline[-1])
    samples = []
    for image in inputs:
        sample = pack_sample(pack, image.permute(1, 2, 0).numpy())[
            'data_samples']
        sample.set_metainfo(dict(batch_input_shape=tuple(inputs.shape[-2:])))
        samples.append(sample)
    return samples


def run_onnx(path: str, inputs: Tensor) -> List[np.ndarray]:
    """Run an exported graph with onnxruntime on the CPU."""
    import onnxruntime
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    return session.run(None, {'inputs': inputs.numpy()})


@torch.no_grad()
def onnx_difference(graph: nn.Module, path: str, inputs: Tensor) -> float:
    """Largest |PyTorch - onnxruntime| over every output of the graph.

    Raises:
        ValueError: If the ONNX graph's outputs differ in number or shape
            from the PyTorch model's (a graph that baked the traced input's
            shapes in).
    """
    return max_abs_difference(list(graph(inputs)), run_onnx(path, inputs))


def node_histogram(path: str) -> dict:
    """``{op_type: count}`` of an ONNX graph's nodes."""
    import onnx
    return dict(Counter(node.op_type for node in onnx.load(path).graph.node))


def dummy_inputs(shape: Sequence[int], seed: int = 0) -> Tensor:
    """A deterministic normalised batch of the given (N, C, H, W) shape."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)
