"""tools/analysis_tools/benchmark.py runs and writes valid JSON (timings are never asserted)."""
import json
import time

import pytest
import torch

from mmdoconv.ops.extension import load_extension
from runs import run_tool


def test_benchmark_tool_writes_json(tmp_path):
    out = tmp_path / 'bench.json'
    result = run_tool('tools/analysis_tools/benchmark.py', '--shapes', '8x6', '16x5',
                      '--repeats', '2', '--warmup', '1', '--profile',
                      '--out', str(out))
    assert '| 8, 6×6, 3×3 dense |' in result.stdout
    assert 'machine: cpu=' in result.stdout
    isa = load_extension()[0].instruction_set()
    assert f'compose=fused (cpp, {isa})' in result.stdout
    # --profile: where the train step's time goes, fused and pure PyTorch.
    sections = {part.split(' (10 steps)')[0]: part for part in
                result.stdout.split('Profile: DO-Conv train step, ')[1:]}
    assert len(sections) == 6
    fused = sections['8x6, fused composition']
    kept = sections["8x6, fused composition, W' kept"]
    pure = sections["8x6, pure-PyTorch composition, W' kept"]
    assert 'mmdoconv::RecomposingConv2d' in fused
    assert '_ComposeKernel' not in fused
    assert 'FusedComposeBackward' in kept and 'Recomposing' not in kept
    assert '_ComposeKernelBackward' in pure and 'FusedCompose' not in pure
    payload = json.loads(out.read_text())
    assert set(payload) == {'machine', 'layers', 'models', 'configs',
                            'layer_times'}
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

    def hooked_layers(channels, device, kernel=3, groups=1):
        layers = real_layers(channels, device, kernel, groups)
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


def test_layer_shapes_name_kernel_and_groups():
    """``--shapes`` takes the depthwise and large-kernel layers the zoo
    holds; the benchmark builds exactly those layers."""
    import argparse

    import pytest

    from workshop.benchmark_layers import LayerShape, _layers, parse_shape
    assert parse_shape('768x7:k7:dw') == LayerShape(768, 7, 7, 768)
    assert parse_shape('256x14:g32') == LayerShape(256, 14, 3, 32)
    assert parse_shape('64x56') == LayerShape(64, 56, 3, 1)
    assert str(parse_shape('672x14:k5:dw')) == '672x14:k5:dw'
    for bad in ('768x7:k7:dw2', '10x7:g3', '8x6:k0', '8x6:x'):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            parse_shape(bad)
    layers = _layers(12, torch.device('cpu'), kernel=5, groups=12)
    for name, layer in layers.items():
        assert (layer.kernel_size, layer.groups, layer.padding) == (
            (5, 5), 12, (2, 2)), name
    out = layers['doconv'](torch.randn(1, 12, 6, 6))
    assert out.shape == (1, 12, 6, 6)


def test_benchmark_times_depthwise_layers(tmp_path):
    out = tmp_path / 'dw.json'
    printed = run_tool('tools/analysis_tools/benchmark.py', '--shapes',
                       '12x6:k7:dw', '--repeats', '1', '--warmup', '0',
                       '--out', str(out)).stdout
    assert '| 12, 6×6, 7×7 depthwise |' in printed
    layer = json.loads(out.read_text())['layers'][0]
    assert (layer['kernel'], layer['groups']) == (7, 12)


def test_benchmark_times_any_config_and_a_list_of_them(tmp_path):
    """``--models`` takes upstream configs (scope::path) and list files:
    each row names the config, the layers the switch converts and the
    parameters D adds (the switch's own counts), times both variants in
    every round and gives each variant's peak memory from its own
    process."""
    from mmengine.config import Config

    from mmdoconv import convert_to_doconv
    from mmdoconv.utils.cli import build_model
    config = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
    zoo = tmp_path / 'zoo.txt'
    zoo.write_text(f'# one config\n{config}  # ResNet-18\n\n')
    out = tmp_path / 'configs.json'
    printed = run_tool('tools/analysis_tools/benchmark.py', '--shapes',
                       '--models', str(zoo), '--model-repeats', '2',
                       '--model-batch', '2', '--model-size', '32',
                       '--python-glue', '--control', '--layer-times',
                       '--ws-reference',
                       '--out', str(out)).stdout
    assert 'Layer level' not in printed
    from workshop.benchmark_configs import resolve_config
    model = build_model(Config.fromfile(resolve_config(config)))
    report = convert_to_doconv(model)
    payload = json.loads(out.read_text())
    (row, ) = payload['configs']
    assert row['config'] == config and row['model'] == 'ImageClassifier'
    assert row['converted'] == len(report.converted) == 17  # stem + 16
    assert row['added_params'] == report.added_params > 0
    for variant in ('plain', 'doconv'):
        assert len(row['train'][variant]['samples']) == 2
        assert row['train'][variant]['peak_mb'] > 100
    # --python-glue and --control: timed (not their memory), each a column
    # of the table
    for variant in ('doconv_python', 'plain_copy', 'plain_ws'):
        assert len(row['train'][variant]['samples']) == 2
        assert 'peak_mb_samples' not in row['train'][variant]
    assert ('| Python glue: ratio (spread) | A/A control, plain copy: ratio '
            '(spread) | ConvWS reference: ratio (spread) |') in printed
    # --ws-reference: every converted conv (all nn.Conv2d here) swapped
    assert row['ws_swapped'] == 17
    assert row['converted_names'] == report.converted
    line = [l for l in printed.splitlines()
            if l.startswith('| resnet18_8xb32_in1k |')]
    assert len(line) == 1 and '| 17 |' in line[0]
    assert line[0].count('|') == 12  # eleven cells
    assert f'{report.added_params / 1e6:.2f} M' in line[0]
    # --layer-times: every converted layer timed in place, in both models,
    # through its own nodes only (the C++ node in the DO-Conv model)
    (times, ) = payload['layer_times']
    assert [layer['name'] for layer in times['layers']] == report.converted
    for layer in times['layers']:
        assert layer['plain']['nodes'] == [
            'ConvolutionBackward0', 'torch::autograd::AccumulateGrad']
        assert layer['doconv']['nodes'] == [
            'torch::autograd::AccumulateGrad'] * 2 + [
                'torch::autograd::CppNode<mmdoconv::RecomposingConv2d>']
        for variant in ('plain', 'doconv'):
            assert len(layer[variant]['backward']) == 2
            assert all(t > 0 for t in layer[variant]['backward'])
    assert '| 3×3 Conv2d 512→512 | 3 |' in printed
    assert '| **all converted layers** | 17 |' in printed
    assert 'of which the converted layers' in printed


def test_benchmark_refuses_a_missing_config_before_any_work(tmp_path):
    from runs import run_python
    for models, message in (
            (['mmpretrain::resnet/resnet19.py'],
             "config pattern 'mmpretrain::resnet/resnet19.py' matches no "
             'file'),
            (['nowhere.py'], "config 'nowhere.py' does not exist"),
            ([str(tmp_path / 'zoo.txt')], 'does not exist')):
        result = run_python('tools/analysis_tools/benchmark.py', '--models',
                            *models, '--out', str(tmp_path / 'b.json'),
                            check=False)
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith('error: ') and message in last, last
        assert 'machine:' not in result.stdout
    assert not (tmp_path / 'b.json').exists()


def test_tensor_loss_reaches_every_output():
    from workshop.benchmark_configs import tensor_loss
    logits = torch.randn(4, 10, requires_grad=True)
    labels = torch.tensor([1, 12, 3, 9])
    loss = tensor_loss(logits, labels)
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy(logits, labels % 10))
    maps = [torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(2)]
    tensor_loss((maps[0], [maps[1]]), labels).backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)


def test_benchmark_builds_configs_with_pretrained_init_offline():
    """Configs whose backbone starts from pretrained weights (mmseg's
    DeepLabv3: ``open-mmlab://resnet18_v1c``) are initialised as the Runner
    initialises them, without the download: nothing can be fetched here,
    and calling ``init_weights()`` as it stands raised a URLError."""
    from workshop.benchmark_configs import benchmark_config
    config = ('mmseg::deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-'
              '512x1024.py')
    row = benchmark_config(config, repeats=1, warmup=0, batch=2, size=64,
                           rss_steps=0)
    assert row['model'] == 'EncoderDecoder' and row['converted'] == 24
    assert row['added_params'] > 0
    assert all(len(row['train'][v]['samples']) == 1
               for v in ('plain', 'doconv'))


def test_a_config_that_cannot_be_timed_keeps_its_row_and_the_run_goes_on(
        tmp_path):
    """Faster R-CNN's tensor-mode forward reads image metas a bare batch
    does not carry: its row names why it was not timed, the next config is
    timed and the JSON is written (it was a traceback that lost the run)."""
    out = tmp_path / 'det.json'
    printed = run_tool(
        'tools/analysis_tools/benchmark.py', '--shapes', '--models',
        'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
        'mmpretrain::resnet/resnet18_8xb32_in1k.py', '--model-repeats', '1',
        '--model-batch', '2', '--model-size', '32', '--rss-runs', '1',
        '--out', str(out)).stdout
    first, second = json.loads(out.read_text())['configs']
    assert 'tensor-mode train step' in first['error']
    assert 'TypeError' in first['error'] and '--models det' in first['error']
    assert second['converted'] == 17 and 'error' not in second
    assert '| faster-rcnn_r50_fpn_1x_coco | not timed: ' in printed
    assert '| resnet18_8xb32_in1k | 17 |' in printed


def test_python_glue_variant_times_the_python_function(tmp_path):
    """``--python-glue``: one more interleaved variant, the same DO-Conv
    layer on the Python ``autograd.Function`` (the C++ node everywhere
    else), in the JSON and as a table column."""
    from mmdoconv import DOConv2d
    from workshop.benchmark_layers import in_python_glue
    layer = DOConv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    nodes = []
    in_python_glue(lambda: nodes.append(layer(x).grad_fn.name()))()
    nodes.append(layer(x).grad_fn.name())
    assert nodes == ['RecomposingConv2dBackward',
                     'torch::autograd::CppNode<mmdoconv::RecomposingConv2d>']
    out = tmp_path / 'glue.json'
    printed = run_tool('tools/analysis_tools/benchmark.py', '--shapes',
                       '12x6:dw', '--repeats', '2', '--warmup', '0',
                       '--python-glue', '--out', str(out)).stdout
    assert 'DO-Conv, Python glue (ratio, spread)' in printed
    (layer_result, ) = json.loads(out.read_text())['layers']
    assert len(layer_result['train']['doconv_python']['samples']) == 2
    assert 'doconv_python' not in layer_result['eval']


@pytest.mark.parametrize('flag,message', [
    ('--python-glue', 'error: --python-glue times layers (--shapes) and '
     'config models (--models CONFIG or a .txt list), but neither was given'),
    ('--control', "error: --control times a copy of each config's plain "
     'model (--models CONFIG or a .txt list), but no config was given'),
    ('--layer-times', 'error: --layer-times times config models (--models '
     'CONFIG or a .txt list), but no config was given'),
    ('--ws-reference', 'error: --ws-reference times config models (--models '
     'CONFIG or a .txt list), but no config was given')])
def test_optional_variants_need_something_to_time(flag, message, tmp_path):
    from runs import run_python
    result = run_python('tools/analysis_tools/benchmark.py', '--shapes',
                        flag, '--out', str(tmp_path / 'b.json'), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == message
    assert not (tmp_path / 'b.json').exists()


class _SlowBackward(torch.autograd.Function):
    """Identity that sleeps in both passes: a layer whose cost is known."""

    @staticmethod
    def forward(ctx, x):
        time.sleep(0.01)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(0.03)
        return grad


class _Slow(torch.nn.Module):

    def forward(self, x):
        return _SlowBackward.apply(x)


def test_layer_clock_times_each_layer_through_its_own_nodes_only():
    """The backward of a layer is the nodes its forward recorded, up to its
    input: the slow layer's 30 ms go to it and not to the layer after it
    (whose graph reaches it through its input), and the network input's
    ``AccumulateGrad`` belongs to no layer."""
    from workshop.benchmark_layer_times import LayerClock
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), _Slow(),
                                torch.nn.Conv2d(3, 2, 1))
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    clock = LayerClock(model, ['0', '1', '2'])
    step = clock.step(lambda: model(x).sum().backward())
    step()
    step()
    model(x)  # outside a timed step: nothing recorded
    clock.remove()
    assert len(clock.forward) == len(clock.backward) == 2
    for forward, backward in zip(clock.forward, clock.backward):
        assert forward['1'] >= 0.01 and backward['1'] >= 0.03
        assert backward['0'] < 0.03 and backward['2'] < 0.03
        assert min(backward.values()) > 0
    assert clock.node_names['1'] == ['_SlowBackwardBackward']
    for name in ('0', '2'):
        assert clock.node_names[name] == [
            'ConvolutionBackward0'] + ['torch::autograd::AccumulateGrad'] * 2
    with pytest.raises(KeyError, match="no module named '3' in Sequential"):
        LayerClock(model, ['3'])


def test_ws_reference_swaps_the_converted_convs_for_mmcv_convws():
    """The reference variant is mmcv's own ConvWS2d with the plain conv's
    arguments and tensors, in place of exactly the convs named (others and
    non-zero padding modes stay)."""
    from mmcv.cnn import ConvWS2d

    from workshop.benchmark_configs import with_weight_standardization
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2, dilation=2)),
        torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode='reflect'),
        torch.nn.Conv2d(4, 4, 1))
    plain = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert with_weight_standardization(model, ['0', '1.0', '2']) == 2
    first, second = model[0], model[1][0]
    assert type(first) is ConvWS2d and type(second) is ConvWS2d
    assert type(model[2]) is torch.nn.Conv2d  # reflect padding: left
    assert type(model[3]) is torch.nn.Conv2d  # not named: left
    assert (first.stride, first.padding, first.bias) == ((2, 2), (1, 1), None)
    assert (second.groups, second.dilation) == (2, (2, 2))
    assert torch.equal(first.weight, plain[0].weight)
    assert torch.equal(second.bias, plain[1].bias)
    x = torch.randn(1, 3, 13, 13)
    assert model(x).shape == (1, 4, 3, 3)
    # a partial swap is named in the table's cell
    from workshop.benchmark_configs import _ratio_cell
    timed = dict(seconds=2.0, samples=[2.0])
    result = dict(converted=3, ws_swapped=2,
                  train=dict(plain=dict(seconds=1.0, samples=[1.0]),
                             plain_ws=timed))
    assert _ratio_cell(result, 'plain_ws') == ' 2.000 (2.00-2.00, 2 of 3 convs) |'
    result['ws_swapped'] = 3
    assert _ratio_cell(result, 'plain_ws') == ' 2.000 (2.00-2.00) |'
