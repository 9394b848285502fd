"""Where a converted model's extra time goes: every converted conv timed in
place, inside the model's own train step, plain against DO-Conv.

The config benchmark (:mod:`workshop.benchmark_configs`) says what DO-Conv
costs a whole train step; this says where.  Each layer the switch converts
is timed where it sits, in both models, in interleaved rounds:

* forward: module hooks around the layer's forward;
* backward: autograd hooks around every node of the layer's own subgraph —
  the nodes its forward created (the conv, DO-Conv's recomposing node, a
  padding) and the ``AccumulateGrad`` of its parameters, stopping at the
  layer's inputs (their nodes belong to the layers before it).  On CPU the
  engine runs one node at a time, so the durations add up.

The hooks cost a few microseconds per node in both models; the whole step is
timed in the same hooked rounds, so the table's "rest of the step" row (the
step minus its converted layers) says whether anything outside the converted
layers changed.  On CUDA every hook synchronises the device (slower, but each
interval is the device's own work).
"""
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.autograd.graph import Node, get_gradient_edge

from mmdoconv.utils.compare import flatten_tensors

# The models a config's layers are timed in: its plain model and the
# switch's conversion of it.
from .benchmark_configs import (VARIANTS, build_variants, random_batch,
                                resolve_config, train_step)
from .benchmark_layers import _sync, interleaved_medians


def _edge_node(tensor: torch.Tensor) -> Optional[Node]:
    """The node a gradient for ``tensor`` flows into (its ``grad_fn``, or a
    leaf's ``AccumulateGrad``), or None."""
    if not tensor.requires_grad:
        return None
    return get_gradient_edge(tensor).node


def own_nodes(outputs: Sequence[torch.Tensor],
              inputs: Sequence[torch.Tensor]) -> List[Node]:
    """The autograd nodes between a module's outputs and its inputs: what
    its forward recorded, with its parameters' ``AccumulateGrad``, not the
    graph of the layers before it."""
    stop = {node for node in map(_edge_node, inputs) if node is not None}
    found, seen = [], set()
    stack = [node for node in map(_edge_node, outputs) if node is not None]
    while stack:
        node = stack.pop()
        if node in seen or node in stop:
            continue
        seen.add(node)
        found.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions
                     if next_node is not None)
    return found


class LayerClock:
    """Per-step forward and backward seconds of named modules of a model.

    Args:
        model: The model (hooks are added to its modules until
            :meth:`remove`).
        names: Qualified names of the modules to time.
        device: The device the model runs on (CUDA is synchronised around
            every interval).
    """

    def __init__(self, model: nn.Module, names: Sequence[str],
                 device: torch.device = torch.device('cpu')) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in names if name not in modules]
        if missing:
            raise KeyError(f'no module named {missing[0]!r} in '
                           f'{type(model).__name__}')
        self.names = list(names)
        self.device = device
        #: Per step: {name: seconds}; filled by :meth:`step`.
        self.forward: List[Dict[str, float]] = []
        self.backward: List[Dict[str, float]] = []
        #: The backward node names of each module in the last step.
        self.node_names: Dict[str, List[str]] = {}
        self._current: Optional[Tuple[Dict, Dict]] = None
        # Per module: (start, input tensors) of the forwards under way (a
        # module may run again inside its own forward).
        self._open: Dict[str, List[Tuple[float, List[torch.Tensor]]]] = {
            name: [] for name in self.names}
        self._handles = []
        for name in self.names:
            module = modules[name]
            self._handles.append(module.register_forward_pre_hook(
                self._before(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(
                self._after(name), with_kwargs=True))

    def step(self, train_step: Callable[[], None]) -> Callable[[], None]:
        """``train_step`` recording one entry of :attr:`forward` and
        :attr:`backward` per call."""

        def timed() -> None:
            self._current = ({n: 0.0 for n in self.names},
                             {n: 0.0 for n in self.names})
            self.node_names = {}
            try:
                train_step()
            finally:
                forward, backward = self._current
                self._current = None
            self.forward.append(forward)
            self.backward.append(backward)

        return timed

    def remove(self) -> None:
        """Takes the module hooks off."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _before(self, name: str):

        def hook(module, args, kwargs):
            if self._current is None:
                return None
            _sync(self.device)
            self._open[name].append((time.perf_counter(),
                                     flatten_tensors((args, kwargs))))
            return None

        return hook

    def _after(self, name: str):

        def hook(module, args, kwargs, output):
            if self._current is None:
                return None
            _sync(self.device)
            start, inputs = self._open[name].pop()
            self._current[0][name] += time.perf_counter() - start
            nodes = own_nodes(flatten_tensors(output), inputs)
            self.node_names[name] = sorted(
                self.node_names.get(name, []) + [n.name() for n in nodes])
            for node in nodes:
                self._time_node(node, name)
            return None

        return hook

    def _time_node(self, node: Node, name: str) -> None:
        starts = []
        backward = self._current[1]

        def before(grad_outputs):
            _sync(self.device)
            starts.append(time.perf_counter())

        def after(grad_inputs, grad_outputs):
            _sync(self.device)
            backward[name] += time.perf_counter() - starts.pop()

        node.register_prehook(before)
        node.register_hook(after)


def time_layers(config: str, repeats: int = 11, warmup: int = 2,
                batch: int = 8, size: int = 224,
                device: str = 'cpu') -> Dict:
    """Each converted layer's forward and backward inside the train step of
    a config's plain model and of its conversion (interleaved rounds).

    Returns:
        ``dict(config, batch, size, converted,
        steps={variant: [seconds per round]},
        layers=[dict(name, conv, plain=dict(forward, backward, nodes),
        doconv=...)])``: per-round seconds (the last ``repeats``) of every
        converted layer and the backward nodes timed for it.
    """
    device = torch.device(device)
    models, info = build_variants(resolve_config(config))
    names = info['converted_names']
    inputs, labels = random_batch(batch, size, device)
    clocks = {v: LayerClock(models[v].to(device), names, device)
              for v in VARIANTS}
    steps = {v: clocks[v].step(train_step(models[v], inputs, labels))
             for v in VARIANTS}
    try:
        train = interleaved_medians(steps, repeats, warmup, device)
    finally:
        for clock in clocks.values():
            clock.remove()
    plain_modules = dict(models['plain'].named_modules())
    layers = []
    for name in names:
        row = dict(name=name, conv=describe_conv(plain_modules[name]))
        for variant, clock in clocks.items():
            row[variant] = dict(
                forward=[s[name] for s in clock.forward[warmup:]],
                backward=[s[name] for s in clock.backward[warmup:]],
                nodes=clock.node_names.get(name, []))
        layers.append(row)
    return dict(config=config, batch=batch, size=size,
                converted=info['converted'],
                steps={v: train[v]['samples'] for v in VARIANTS},
                layers=layers)


def describe_conv(conv: nn.Module) -> str:
    """``3×3 Conv2d 384→384, 24 groups, stride 2``: what a row stands
    for."""
    kernel = '×'.join(str(k) for k in conv.kernel_size)
    text = f'{kernel} {type(conv).__name__} {conv.in_channels}→' \
           f'{conv.out_channels}'
    if conv.groups == conv.in_channels == conv.out_channels:
        text += ', depthwise'
    elif conv.groups > 1:
        text += f', {conv.groups} groups'
    if any(s != 1 for s in conv.stride):
        text += f', stride {conv.stride[0]}'
    if any(d != 1 for d in conv.dilation):
        text += f', dilation {conv.dilation[0]}'
    return text


def layer_times_table(result: Dict) -> str:
    """Markdown: layers of one kind grouped (count; per round their times
    summed, then the median), every converted layer together, and a line
    splitting the step's extra time between the converted layers and the
    rest.  Times in ms per step; "extra" is DO-Conv minus plain."""

    def median_ms(values: Sequence[float]) -> float:
        return statistics.median(values) * 1e3

    def per_round_sum(rows: List[Dict], variant: str, part: str
                      ) -> List[float]:
        return [sum(values) for values in
                zip(*(row[variant][part] for row in rows))]

    groups: Dict[str, List[Dict]] = {}
    for row in result['layers']:
        groups.setdefault(row['conv'], []).append(row)
    lines = ['| layers | count | forward: plain ms | DO-Conv ms | '
             'backward: plain ms | DO-Conv ms | extra ms | extra per layer '
             'µs |', '|---|---|---|---|---|---|---|---|']

    def add(label: str, rows: List[Dict]) -> float:
        cells = [median_ms(per_round_sum(rows, v, part))
                 for part in ('forward', 'backward') for v in VARIANTS]
        extra = cells[1] - cells[0] + cells[3] - cells[2]
        per_layer = f'{extra * 1e3 / len(rows):.0f}'
        lines.append(f'| {label} | {len(rows)} | {cells[0]:.2f} | {cells[1]:.2f}'
                     f' | {cells[2]:.2f} | {cells[3]:.2f} | {extra:+.2f} | '
                     f'{per_layer} |')
        return extra

    for conv, rows in groups.items():
        add(conv, rows)
    layer_extra = add('**all converted layers**', result['layers'])
    steps = {v: median_ms(result['steps'][v]) for v in VARIANTS}
    step_extra = steps['doconv'] - steps['plain']
    lines.append(
        f'\nTrain step in the same (hooked) rounds: plain '
        f'{steps["plain"]:.1f} ms, DO-Conv {steps["doconv"]:.1f} ms '
        f'({steps["doconv"] / steps["plain"]:.3f}×): {step_extra:+.2f} ms, '
        f'of which the converted layers {layer_extra:+.2f} ms and the rest '
        f'of the step {step_extra - layer_extra:+.2f} ms.')
    return '\n'.join(lines)
