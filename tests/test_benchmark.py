"""tools/analysis_tools/benchmark.py runs and writes valid JSON (timings are never asserted)."""
import json

import torch

from mmdoconv.ops.extension import load_extension
from runs import run_tool


def test_benchmark_tool_writes_json(tmp_path):
    out = tmp_path / 'bench.json'
    result = run_tool('tools/analysis_tools/benchmark.py', '--shapes', '8x6', '16x5',
                      '--repeats', '2', '--warmup', '1', '--profile',
                      '--out', str(out))
    assert '| 8, 6×6 |' in result.stdout and 'machine: cpu=' in result.stdout
    isa = load_extension()[0].instruction_set()
    assert f'compose=fused (cpp, {isa})' in result.stdout
    # --profile: where the train step's time goes, fused and pure PyTorch.
    sections = {part.split(' (10 steps)')[0]: part for part in
                result.stdout.split('Profile: DO-Conv train step, ')[1:]}
    assert len(sections) == 6
    fused = sections['8@6x6, fused composition']
    kept = sections["8@6x6, fused composition, W' kept"]
    pure = sections["8@6x6, pure-PyTorch composition, W' kept"]
    assert 'RecomposingConv2dBackward' in fused
    assert '_ComposeKernel' not in fused
    assert 'FusedComposeBackward' in kept and 'Recomposing' not in kept
    assert '_ComposeKernelBackward' in pure and 'FusedCompose' not in pure
    payload = json.loads(out.read_text())
    assert set(payload) == {'machine', 'layers', 'models'}
    assert [(l['channels'], l['size']) for l in payload['layers']] == [
        (8, 6), (16, 5)]
    for layer in payload['layers']:
        assert set(layer['train']) == {'conv', 'doconv', 'doconv_keep',
                                       'doconv_torch', 'anchor'}
        assert all(len(v['samples']) == 2 for v in layer['train'].values())
        assert set(layer['eval']) == {'conv', 'doconv', 'folded', 'anchor'}
        assert all(v['seconds'] > 0 for v in layer['eval'].values())


def test_benchmark_keeps_an_existing_output_unless_told(tmp_path):
    from runs import run_python
    out = tmp_path / 'bench.json'
    out.write_text('earlier results')
    args = ['tools/analysis_tools/benchmark.py', '--shapes', '8x6',
            '--repeats', '1', '--warmup', '0', '--out', str(out)]
    refused = run_python(*args, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == \
        f"error: '{out}' exists; pass --overwrite to replace it"
    assert 'Traceback' not in refused.stderr
    assert 'machine:' not in refused.stdout  # refused before any work
    assert out.read_text() == 'earlier results'
    run_python(*args, '--overwrite')
    assert json.loads(out.read_text())['layers'][0]['channels'] == 8


def test_benchmark_rejects_bad_shape(tmp_path):
    from runs import run_python
    result = run_python('tools/analysis_tools/benchmark.py', '--shapes',
                        '64by7', check=False)
    assert result.returncode == 2 and "got '64by7'" in result.stderr


def _hook_every_layer(monkeypatch, forward_hook):
    """Register ``forward_hook`` on every layer variant the benchmark
    builds."""
    from workshop import benchmark_layers as benchmark
    real_layers = benchmark._layers

    def hooked_layers(channels, device):
        layers = real_layers(channels, device)
        for layer in layers.values():
            layer.register_forward_hook(forward_hook)
        return layers

    monkeypatch.setattr(benchmark, '_layers', hooked_layers)
    return benchmark


def test_benchmark_amp_runs_layers_under_autocast(tmp_path, monkeypatch):
    dtypes = set()
    benchmark = _hook_every_layer(
        monkeypatch, lambda module, args, out: dtypes.add(out.dtype))
    result = benchmark.benchmark_layer(8, 6, batch=2, repeats=1, warmup=0,
                                       amp=True)
    assert result.amp == 'bfloat16' and dtypes == {torch.bfloat16}
    assert set(result.train) == {'conv', 'doconv', 'doconv_keep',
                                 'doconv_torch', 'anchor'}
    out = tmp_path / 'amp.json'
    printed = run_tool('tools/analysis_tools/benchmark.py', '--shapes', '8x6',
                       '--repeats', '1', '--warmup', '0', '--amp', '--out',
                       str(out)).stdout
    assert 'batch 8, AMP, bfloat16 autocast' in printed
    assert json.loads(out.read_text())['layers'][0]['amp'] == 'bfloat16'


def test_model_table_states_peak_memory_medians_and_spread():
    from workshop.benchmark_models import model_table

    def timing(seconds):
        return dict(seconds=seconds, samples=[seconds, seconds * 1.1])

    train = dict(baseline=dict(timing(10.0), peak_mb=1000.0,
                               peak_mb_samples=[990.0, 1000.0, 1010.0]),
                 doconv=dict(timing(11.0), peak_mb=1020.0,
                             peak_mb_samples=[1000.0, 1020.0, 1030.0]))
    inference = dict(baseline=timing(2.0), doconv=timing(2.2),
                     folded=timing(2.0))
    table = model_table([dict(model='M', batch='batch 2', train=train,
                              inference=inference)])
    row = table.splitlines()[-1]
    assert '| M (batch 2) | 10.000 | 11.000 (1.100, 1.10-1.10) |' in row
    # median ratio 1020/1000; per-run ratios 1000/990 .. 1030/1010
    assert '| 1000, 1020 (1.020, 1.010-1.020) |' in row


def test_benchmark_layers_take_input_gradient_unless_told(tmp_path,
                                                          monkeypatch):
    """By default a layer's train step computes its input's gradient (an
    interior layer); ``--no-input-grad`` times a stem (weight gradients
    only).  The JSON and the printed caption say which."""
    seen = set()
    benchmark = _hook_every_layer(
        monkeypatch, lambda module, args, out: seen.add(
            (torch.is_grad_enabled(), args[0].requires_grad)))
    for input_grad in (True, False):
        seen.clear()
        result = benchmark.benchmark_layer(8, 6, batch=2, repeats=1, warmup=0,
                                           input_grad=input_grad)
        assert result.input_grad is input_grad
        # train steps (grad mode) see the input as asked; eval steps none
        assert seen == {(True, input_grad), (False, input_grad)}
    out = tmp_path / 'stem.json'
    printed = run_tool('tools/analysis_tools/benchmark.py', '--shapes', '8x6',
                       '--repeats', '1', '--warmup', '0', '--no-input-grad',
                       '--out', str(out)).stdout
    assert 'train step with weight gradients only' in printed
    assert json.loads(out.read_text())['layers'][0]['input_grad'] is False
