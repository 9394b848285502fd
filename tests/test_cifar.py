"""The paper's CIFAR experiments (Table 1, Table 6's CIFAR column, Table 8):
backbones against He et al.'s architectures, every config pair, a short run
through mmpretrain's own tools, and the summary tool."""
import glob
import json
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from torch import nn

from mmdoconv import DOConv2d, count_doconv, fold_doconv
from mmdoconv.utils.cli import build_model, load_config
from runs import ROOT, run_python, run_tool, upstream_tool

CONFIGS = osp.join(ROOT, 'configs', 'cifar')
#: (backbone, depth) -> blocks per stage and block kind, from the papers.
ARCH = {20: (3, 'basic'), 56: (9, 'basic'), 110: (18, 'basic'),
        164: (18, 'bottleneck')}
PUBLISHED_MILLIONS = {20: 0.27, 56: 0.85, 110: 1.7, 164: 1.7}


def _build(cfg: dict) -> nn.Module:
    """Build in mmpretrain's scope, whatever default scope an earlier
    test's Runner left (mmengine's would not know mmpretrain's models)."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg)


def _expected_parameters(depth: int, preact: bool, classes: int = 10) -> int:
    """The classifier's parameter count from the architecture (convs, BN
    scale and shift, projection shortcuts, FC), written out independently
    of the code: v1 blocks conv-BN, v2 units BN-conv; option-A shortcuts
    of v1 basic blocks have no parameters, projections are a 1x1 conv (with
    BN in v1)."""
    blocks, kind = ARCH[depth]
    total = 3 * 16 * 9 + (0 if preact else 2 * 16)  # stem conv (+ BN)
    channels = 16
    for stage in range(3):
        width = 16 * 2**stage
        out = 4 * width if kind == 'bottleneck' else width
        for index in range(blocks):
            stride = 2 if stage and not index else 1
            if kind == 'basic':
                convs = [(channels, width, 9), (width, width, 9)]
            else:
                convs = [(channels, width, 1), (width, width, 9),
                         (width, out, 1)]
            total += sum(c_in * c_out * k for c_in, c_out, k in convs)
            # BN of each conv's input (v2) or output (v1)
            total += sum(2 * (c_in if preact else c_out)
                         for c_in, c_out, _ in convs)
            if (channels != out or stride != 1) and (
                    kind == 'bottleneck' or preact):
                total += channels * out + (0 if preact else 2 * out)
            channels = out
    if preact:
        total += 2 * channels  # the final BN
    return total + channels * classes + classes


@pytest.mark.parametrize('depth', sorted(ARCH))
@pytest.mark.parametrize('backbone', ['CIFARResNet', 'CIFARPreActResNet'])
def test_backbones_match_the_published_architectures(backbone, depth):
    model = _build(dict(type=backbone, depth=depth))
    count = sum(p.numel() for p in model.parameters()) + \
        model.feat_dim * 10 + 10
    assert count == _expected_parameters(depth, backbone != 'CIFARResNet')
    # The published counts are He et al.'s (v2's projections add 0.003 M).
    assert abs(count / 1e6 - PUBLISHED_MILLIONS[depth]) < \
        (0.01 if depth < 100 else 0.05)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)
             and m.kernel_size != (1, 1)]
    assert len(convs) == (depth - 1 if depth < 164 else 55)
    outs = model(torch.randn(2, 3, 32, 32))
    assert outs[-1].shape == (2, model.feat_dim, 8, 8)


def test_plain20_is_resnet20_without_shortcuts():
    plain = _build(dict(type='CIFARPlainNet', depth=20))
    resnet = _build(dict(type='CIFARResNet', depth=20))
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == \
        [(k, v.shape) for k, v in resnet.state_dict().items()]
    plain.load_state_dict(resnet.state_dict())
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), resnet.eval()
    with torch.no_grad():
        assert not torch.allclose(plain(x)[0], resnet(x)[0])
        # Without shortcuts block 1 of stage 1 is conv-BN-ReLU twice.
        block = resnet.layer1[0]
        stem = resnet.stem(x)
        assert torch.equal(plain.layer1[0](stem),
                           torch.relu(block.conv2(block.conv1(stem))))


def _names():
    return sorted(osp.basename(p)[:-3]
                  for p in glob.glob(osp.join(CONFIGS, '*.py')))


def test_all_18_table_1_pairs_and_the_ablation_variants_exist():
    names = _names()
    pairs = [n for n in names if '-doconv_' in n]
    assert len(pairs) == 18
    for doconv in pairs:
        assert doconv.replace('-doconv_', '_') in names
    assert len([n for n in names if '-doconv-stage' in n]) == 6
    assert len([n for n in names if '-doconv-dmul' in n]) == 2
    assert len(names) == 44


LAYERS = {'plain20': 19, 'resnet20': 19, 'resnet56': 55, 'resnet110': 109,
          'resnet164': 55, 'preact-resnet20': 19, 'preact-resnet56': 55,
          'preact-resnet110': 109, 'preact-resnet164': 55}


@pytest.mark.parametrize('name', [n for n in _names() if '-doconv_' in n])
def test_pair_differs_by_the_switch_and_folds_into_the_baseline(name):
    """The DO-Conv config is its baseline plus the switch and the fold hook;
    with random non-zero D the folded model is the baseline bit for bit
    (strict load, same outputs)."""
    baseline_name = name.replace('-doconv_', '_')
    doconv_cfg = Config.fromfile(osp.join(CONFIGS, name + '.py'))
    baseline_cfg = Config.fromfile(osp.join(CONFIGS, baseline_name + '.py'))
    differ = {k for k in set(doconv_cfg) | set(baseline_cfg)
              if doconv_cfg.get(k) != baseline_cfg.get(k)}
    assert differ == {'runner_type', 'custom_hooks'}, differ
    model = build_model(load_config(osp.join(CONFIGS, name + '.py')))
    network = name.split('_')[0][len('cifar-'):-len('-doconv')]
    assert count_doconv(model) == LAYERS[network]
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, DOConv2d):
                layer.D.normal_(0, 0.1)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x, mode='tensor')
        fold_doconv(model)
        plain = build_model(load_config(osp.join(CONFIGS,
                                                 baseline_name + '.py')))
        plain.load_state_dict(model.state_dict(), strict=True)
        assert torch.equal(model(x, mode='tensor'), expected)
        torch.testing.assert_close(plain.eval()(x, mode='tensor'), expected,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name, layers, d_mul', [
    ('stage0', 1, 9), ('stage1', 6, 9), ('stage2', 6, 9), ('stage3', 6, 9),
    ('stage01', 7, 9), ('stage012', 13, 9), ('dmul25', 19, 25),
    ('dmul36', 19, 36)])
def test_table_6_and_8_variants(name, layers, d_mul):
    model = build_model(load_config(osp.join(
        CONFIGS, f'cifar-preact-resnet20-doconv-{name}_1xb128-64k_'
        'cifar100.py')))
    doconv = [m for m in model.modules() if isinstance(m, DOConv2d)]
    assert len(doconv) == layers
    assert {m.D_mul for m in doconv} == {d_mul}
    if name.startswith('stage'):
        stages = {'0': 'stem', '1': 'layer1', '2': 'layer2', '3': 'layer3'}
        wanted = {stages[s] for s in name[len('stage'):]}
        names = {n.split('.')[1] for n, m in model.named_modules()
                 if isinstance(m, DOConv2d)}
        assert names == wanted


def test_trains_and_tests_folded_through_mmpretrains_own_tools(tmp_path):
    """A few iterations on the synthetic CIFAR-10 set with mmpretrain's own
    train.py, then its own test.py, where the config's fold hook evaluates
    the folded model: the metric equals the unfolded one."""
    from workshop.synthetic import write_cifar10
    root = str(tmp_path / 'cifar10')
    write_cifar10(root, num_per_batch=8, num_test=16,
                  progress=lambda message: None)
    config = osp.join(CONFIGS, 'cifar-resnet20-doconv_1xb128-64k_cifar10.py')
    options = [f'train_dataloader.dataset.data_root={root}',
               f'val_dataloader.dataset.data_root={root}',
               f'test_dataloader.dataset.data_root={root}',
               'train_dataloader.batch_size=8',
               *(f'{split}_dataloader.{key}' for split in ('train', 'val',
                                                            'test')
                 for key in ('num_workers=0', 'persistent_workers=False')),
               'train_cfg.max_iters=4', 'train_cfg.val_interval=2',
               'default_hooks.checkpoint.interval=4',
               'default_hooks.logger.interval=1']
    work_dir = tmp_path / 'work'
    train = run_tool(upstream_tool('mmpretrain', 'train.py'), config,
                     '--work-dir', str(work_dir), '--cfg-options', *options)
    log = train.stdout + train.stderr
    assert 'DOConvRunner: converted 19 convs' in log
    val = [float(v) for v in re.findall(r'accuracy/top1: ([\d.]+)', log)]
    assert len(val) >= 2
    checkpoint = work_dir / 'iter_4.pth'
    test = run_tool(upstream_tool('mmpretrain', 'test.py'), config,
                    str(checkpoint), '--work-dir', str(tmp_path / 'test'),
                    '--cfg-options', *options)
    test_log = test.stdout + test.stderr
    assert 'folded 19 DO-Conv layers' in test_log
    tested = float(re.findall(r'accuracy/top1: ([\d.]+)', test_log)[-1])
    assert tested == val[-1]
    # Fig. 6: the kernel-change maps of the trained layers.
    run_tool('tools/analysis_tools/visualize_kernels.py', config,
             str(checkpoint), str(tmp_path / 'fig6.png'), '--prefix',
             'backbone')
    assert (tmp_path / 'fig6.png').read_bytes()[:4] == b'\x89PNG'
    # The summary tool reads the run (one run, no baseline).
    summary = run_python('tools/analysis_tools/cifar_summary.py',
                         str(work_dir))
    assert 'cifar-resnet20-doconv_1xb128-64k_cifar10' in summary.stdout


def _fake_run(work_dir, config, values):
    run = work_dir / '20260101_000000'
    (run / 'vis_data').mkdir(parents=True)
    (work_dir / f'{config}.py').write_text('# dumped config\n')
    lines = [json.dumps({'loss': 1.0, 'step': 1})]
    lines += [json.dumps({'accuracy/top1': v, 'step': i})
              for i, v in enumerate(values)]
    (run / 'vis_data' / 'scalars.json').write_text('\n'.join(lines) + '\n')


def test_summary_gives_the_papers_statistic(tmp_path):
    """Mean of the last five validations per run, averaged over runs, and
    the DO-Conv - baseline delta, on logs with known numbers."""
    base = 'cifar-resnet20_1xb128-64k_cifar10'
    doconv = 'cifar-resnet20-doconv_1xb128-64k_cifar10'
    _fake_run(tmp_path / 'b1', base, [10, 90, 91, 92, 93, 94])   # 92
    _fake_run(tmp_path / 'b2', base, [90, 90, 90, 90, 90])       # 90
    _fake_run(tmp_path / 'd1', doconv, [50, 93, 93, 93, 93, 93])  # 93
    out = tmp_path / 'table.md'
    result = run_python('tools/analysis_tools/cifar_summary.py',
                        *(str(tmp_path / d) for d in ('b1', 'b2', 'd1')),
                        '--markdown', str(out))
    row = [line for line in out.read_text().splitlines()
           if line.startswith(f'| {base}')]
    assert row == [f'| {base} | 91.00 (2 runs, 90.00-92.00) | {doconv} | '
                   '93.00 (1 run) | +2.00 |'], result.stdout
    again = run_python('tools/analysis_tools/cifar_summary.py',
                       str(tmp_path / 'b1'), '--markdown', str(out),
                       check=False)
    assert again.returncode == 2 and 'exists; pass --overwrite' in \
        again.stderr
