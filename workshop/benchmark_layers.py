"""Layer-level timing of DO-Conv against plain convolution (the model level
is :mod:`workshop.benchmark_models`), for ``tools/analysis_tools/benchmark.py``.

Every measurement is a ratio taken in one run with the variants interleaved
(A B C A B C ...), so a machine that drifts (turbo, other load) biases no
variant; each time is the median over repeats after warm-up.
"""
import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import (Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple)

import torch
from torch import Tensor, nn

from mmdoconv.cnn.doconv import DOConv2d
from mmdoconv.cnn.recomposing_conv import recompose_in_python
from mmdoconv.ops.extension import load_extension
from mmdoconv.ops.fused_compose import force_backend, fused_backend
from mmdoconv.utils.reference_converter import reference_kernel


class LayerShape(NamedTuple):
    """A benchmarked layer: ``channels`` in and out, a ``size`` x ``size``
    map, a ``kernel`` x ``kernel`` kernel, ``groups`` (``channels`` for a
    depthwise layer), stride 1 and 'same' padding."""
    channels: int
    size: int
    kernel: int = 3
    groups: int = 1

    def __str__(self) -> str:
        text = f'{self.channels}x{self.size}'
        if self.kernel != 3:
            text += f':k{self.kernel}'
        if self.groups == self.channels and self.groups > 1:
            text += ':dw'
        elif self.groups != 1:
            text += f':g{self.groups}'
        return text


LAYER_SHAPES = (LayerShape(64, 56), LayerShape(128, 28), LayerShape(256, 14),
                LayerShape(512, 7))
#: The depthwise layers of ConvNeXt-T (7x7) and MobileNetV3-large (5x5, 3x3)
#: that issue 25's table times.
DEPTHWISE_SHAPES = ('96x56:k7:dw', '384x14:k7:dw', '768x7:k7:dw',
                    '672x14:k5:dw', '960x7:k5:dw', '384x14:dw')


def parse_shape(text: str) -> LayerShape:
    """A layer ``CHANNELSxSIZE[:kKERNEL][:dw|:gGROUPS]``, for argparse:
    ``256x14`` (3x3 dense), ``768x7:k7:dw`` (ConvNeXt-T's last depthwise
    7x7), ``672x14:k5:dw``, ``256x14:g32``."""
    error = argparse.ArgumentTypeError(
        'a shape is CHANNELSxSIZE[:kKERNEL][:dw|:gGROUPS], e.g. 256x14 or '
        f'768x7:k7:dw, but got {text!r}')
    head, *options = text.lower().split(':')
    try:
        channels, size = (int(v) for v in head.split('x'))
        kernel, groups = 3, 1
        for option in options:
            if option == 'dw':
                groups = channels
            elif option[:1] in ('k', 'g'):
                value = int(option[1:])
                kernel, groups = (value, groups) if option[0] == 'k' \
                    else (kernel, value)
            else:
                raise ValueError(option)
    except ValueError:
        raise error
    if min(channels, size, kernel, groups) <= 0:
        raise argparse.ArgumentTypeError(f'shape must be positive: {text!r}')
    if channels % groups:
        raise argparse.ArgumentTypeError(
            f'groups must divide channels, but got {text!r}')
    return LayerShape(channels, size, kernel, groups)


class AnchorDOConv2d(nn.Conv2d):
    """The public reference layer's arithmetic, as a timing anchor.

    Recomposes ``W'`` on every forward, in eval too: adds a stored identity
    to D and runs its einsum
    (:func:`~mmdoconv.utils.reference_converter.reference_kernel`).
    """

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        m, n = self.kernel_size
        self.D = nn.Parameter(torch.zeros(in_channels, m * n, m * n))
        self.register_buffer(
            'd_diag', torch.eye(m * n).repeat(in_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.reshape(*self.weight.shape[:2], -1)
        kernel = reference_kernel(weight, self.D + self.d_diag, self.groups)
        return self._conv_forward(x, kernel.reshape(self.weight.shape),
                                  self.bias)


def machine_info(device: str = 'cpu') -> Dict[str, str]:
    """CPU model, threads, torch version, device and DO-Conv composition
    path of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    probe = torch.zeros(1, device=device)
    backend = fused_backend(probe)
    name = (torch.cuda.get_device_name(probe.device)
            if probe.device.type == 'cuda' else 'cpu')
    if backend == 'cpp':
        # Which vector variant runs (MMDOCONV_CPU_ISA narrows it).
        compose = f'fused (cpp, {load_extension()[0].instruction_set()})'
    else:
        compose = f'fused ({backend})' if backend else 'pure PyTorch'
    return dict(cpu=cpu, cpu_count=str(os.cpu_count()),
                torch_threads=str(torch.get_num_threads()),
                torch=torch.__version__, device=name, compose=compose)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> Optional[float]:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def interleaved_medians(steps: Dict[str, Callable[[], None]], repeats: int,
                        warmup: int, device: torch.device
                        ) -> Dict[str, Dict[str, Optional[float]]]:
    """Median seconds (and peak memory on CUDA) of each step, interleaved
    in alternating order.

    Each result also keeps its per-round ``samples``: round ``i`` of every
    step ran back to back, so ``samples[i]`` ratios between two steps are
    paired measurements (:func:`ratio_spread`).
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    _sync(device)
    times: Dict[str, List[float]] = {name: [] for name in steps}
    peaks: Dict[str, Optional[float]] = {}
    names = list(steps)
    for round_index in range(repeats):
        # A B C, C B A, ...: no variant always runs first (after the
        # previous round's last step freed its memory) or last.
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            step = steps[name]
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            peak = _peak_memory_mb(device)
            if peak is not None:
                peaks[name] = max(peak, peaks.get(name) or 0.0)
    return {name: dict(seconds=statistics.median(values),
                       peak_mb=peaks.get(name), samples=values)
            for name, values in times.items()}


def ratio_spread(result: Dict, base: Dict) -> Tuple[float, float]:
    """Lowest and highest per-round ratio of two interleaved results."""
    ratios = [a / b for a, b in zip(result['samples'], base['samples'])]
    return min(ratios), max(ratios)


@dataclass
class LayerResult:
    channels: int
    size: int
    batch: int
    kernel: int = 3
    groups: int = 1
    amp: Optional[str] = None
    input_grad: bool = True
    train: Dict[str, Dict] = field(default_factory=dict)
    eval: Dict[str, Dict] = field(default_factory=dict)


def _layers(channels: int, device: torch.device, kernel: int = 3,
            groups: int = 1) -> Dict[str, nn.Module]:
    torch.manual_seed(0)
    options = dict(padding=kernel // 2, groups=groups, bias=False)
    conv = nn.Conv2d(channels, channels, kernel, **options)
    doconv = DOConv2d(channels, channels, kernel, **options)
    with torch.no_grad():
        doconv.D.normal_(std=0.01)
    anchor = AnchorDOConv2d(channels, channels, kernel, **options)
    # The layer before the fused kernel and recomputation: composes with
    # pure PyTorch (forced in train_step) and keeps W' for the backward.
    doconv_torch = copy.deepcopy(doconv)
    doconv_torch.recompute_kernel = False
    doconv_keep = copy.deepcopy(doconv)  # fused, keeps W'
    doconv_keep.recompute_kernel = False
    layers = dict(conv=conv, doconv=doconv, doconv_keep=doconv_keep,
                  doconv_torch=doconv_torch, folded=doconv.fold(),
                  anchor=anchor)
    return {name: layer.to(device) for name, layer in layers.items()}


def in_python_glue(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with every recomposing layer on the Python function (what
    ``--python-glue`` times beside the C++ node)."""
    def python_glue_step() -> None:
        with recompose_in_python():
            step()

    return python_glue_step


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of ``--amp``: fp16 on CUDA (mmengine's
    AmpOptimWrapper), bf16 on CPU (the tools' CPU AMP)."""
    return torch.float16 if device.type == 'cuda' else torch.bfloat16


def benchmark_layer(channels: int, size: int, batch: int = 8,
                    repeats: int = 10, warmup: int = 3,
                    device: str = 'cpu', amp: bool = False,
                    input_grad: bool = True, kernel: int = 3,
                    groups: int = 1, python_glue: bool = False) -> LayerResult:
    """Train-step and eval-forward times of the layer variants.

    ``doconv`` composes with the fused kernel where one is available and
    composes W' again in the backward (the default), ``doconv_keep`` keeps
    W' instead (``recompute_kernel=False``), ``doconv_torch`` composes with
    pure PyTorch and keeps W' (DO-Conv before both); eval reuses the cached
    composed kernel, so there only ``doconv`` is timed.  With ``amp`` every
    forward runs under autocast (:func:`amp_dtype`); parameters stay fp32.
    With ``input_grad`` (default) the train step computes the input's
    gradient too, as every layer of a network but the first does; without
    it the layer is a stem fed the image (the weight gradients only).
    ``kernel`` and ``groups`` as for ``nn.Conv2d`` (padding ``kernel // 2``).
    With ``python_glue`` the train step is also timed as ``doconv_python``:
    ``doconv`` on the Python ``autograd.Function`` that the C++ node
    replaces on CPU (:func:`~mmdoconv.cnn.recomposing_conv.recompose_in_python`).
    """
    device = torch.device(device)
    layers = _layers(channels, device, kernel, groups)
    if python_glue:
        layers['doconv_python'] = copy.deepcopy(layers['doconv'])
    x = torch.randn(batch, channels, size, size, device=device,
                    requires_grad=input_grad)
    grad = torch.randn(batch, channels, size, size, device=device)
    dtype = amp_dtype(device) if amp else None
    if amp:
        grad = grad.to(dtype)  # the output's dtype under autocast

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if amp \
            else contextlib.nullcontext()

    def train_step(layer: nn.Module,
                   backend: Optional[str] = None) -> Callable[[], None]:
        layer.train()

        def step() -> None:
            layer.zero_grad(set_to_none=True)
            x.grad = None
            with force_backend(backend):
                with autocast():
                    out = layer(x)
                out.backward(grad)
        return step

    def eval_step(layer: nn.Module) -> Callable[[], None]:

        def step() -> None:
            with torch.no_grad(), autocast():
                layer(x)
        return step

    result = LayerResult(channels, size, batch, kernel, groups,
                         amp=str(dtype).replace('torch.', '') if amp
                         else None, input_grad=input_grad)
    steps = {n: train_step(l, 'torch' if n == 'doconv_torch' else None)
             for n, l in layers.items() if n != 'folded'}
    if python_glue:
        steps['doconv_python'] = in_python_glue(steps['doconv_python'])
    result.train = interleaved_medians(steps, repeats, warmup, device)
    for layer in layers.values():
        layer.eval()
    result.eval = interleaved_medians(
        {n: eval_step(l) for n, l in layers.items()
         if n not in ('doconv_torch', 'doconv_keep', 'doconv_python')},
        repeats, warmup, device)
    return result


def profile_layer(channels: int, size: int, batch: int = 8,
                  device: str = 'cpu', steps: int = 10, rows: int = 8,
                  input_grad: bool = True, kernel: int = 3,
                  groups: int = 1) -> Dict[str, str]:
    """``torch.profiler`` tables (self time, top ``rows`` ops) of the DO-Conv
    train step: fused composition (W' recomposed in the backward, and W'
    kept) and pure-PyTorch composition (W' kept); ``input_grad`` as in
    :func:`benchmark_layer`."""
    from torch.profiler import ProfilerActivity, profile
    device = torch.device(device)
    layers = _layers(channels, device, kernel, groups)
    x = torch.randn(batch, channels, size, size, device=device,
                    requires_grad=input_grad)
    grad = torch.randn(batch, channels, size, size, device=device)
    activities = [ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    tables = {}
    for name, backend in (('doconv', None), ('doconv_keep', None),
                          ('doconv_torch', 'torch')):
        layer = layers[name].train()

        def step() -> None:
            layer.zero_grad(set_to_none=True)
            x.grad = None
            with force_backend(backend):
                layer(x).backward(grad)

        for _ in range(3):
            step()
        _sync(device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            _sync(device)
        sort_by = 'self_cuda_time_total' if device.type == 'cuda' \
            else 'self_cpu_time_total'
        tables[name] = prof.key_averages().table(
            sort_by=sort_by, row_limit=rows, max_name_column_width=56)
    return tables


def _layer_name(result: LayerResult) -> str:
    kind = ('depthwise' if result.groups == result.channels > 1 else
            f'{result.groups} groups' if result.groups > 1 else 'dense')
    return (f'{result.channels}, {result.size}×{result.size}, '
            f'{result.kernel}×{result.kernel} {kind}')


def layer_table(results: Sequence[LayerResult]) -> str:
    """A markdown table: times in ms and ratios against nn.Conv2d (and,
    where timed, the Python glue's column after DO-Conv's)."""
    glue = any('doconv_python' in r.train for r in results)
    lines = [
        '| C_in=C_out, map, kernel | train: conv ms | '
        'DO-Conv (ratio, spread) | ' +
        ('DO-Conv, Python glue (ratio, spread) | ' if glue else '') +
        "DO-Conv, W' kept (ratio) | DO-Conv, pure-PyTorch compose, W' kept "
        '(ratio) | anchor (ratio) | eval: conv ms | DO-Conv (ratio) | '
        'folded (ratio) | anchor (ratio) |',
        '|---|---|---|---|---|---|---|---|---|---|' + ('---|' if glue else '')
    ]

    def cell(stage: Dict, name: str, spread: bool = False) -> str:
        ratio = stage[name]['seconds'] / stage['conv']['seconds']
        text = f'{stage[name]["seconds"] * 1e3:.2f} ({ratio:.2f}'
        if spread:
            low, high = ratio_spread(stage[name], stage['conv'])
            text += f', {low:.2f}-{high:.2f}'
        return text + ')'

    for r in results:
        lines.append(
            f'| {_layer_name(r)} | '
            f'{r.train["conv"]["seconds"] * 1e3:.2f} | '
            f'{cell(r.train, "doconv", spread=True)} | ' +
            (f'{cell(r.train, "doconv_python", spread=True)} | '
             if 'doconv_python' in r.train else ' | ' if glue else '') +
            f'{cell(r.train, "doconv_keep")} | '
            f'{cell(r.train, "doconv_torch")} | {cell(r.train, "anchor")} | '
            f'{r.eval["conv"]["seconds"] * 1e3:.2f} | '
            f'{cell(r.eval, "doconv")} | {cell(r.eval, "folded")} | '
            f'{cell(r.eval, "anchor")} |')
    return '\n'.join(lines)


def write_json(path: str, payload: Dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def encode(value):
        if isinstance(value, LayerResult):
            return asdict(value)
        raise TypeError(type(value))

    with open(path, 'w') as f:
        json.dump(payload, f, indent=2, default=encode)
