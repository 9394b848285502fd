"""Faster R-CNN R50-FPN with DO-Conv (paper Table 5) on the synthetic COCO set."""
import os.path as osp
import pickle
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from torch import nn

import mmdoconv  # noqa: F401
from mmdoconv import DOConv2d, load_checkpoint_file
from mmdoconv.utils.cli import build_model, build_runner
from runs import (as_cli, config_path, detection_options, logged_metrics,
                  run_tool, upstream_tool)

BASELINE = 'faster-rcnn_r50_fpn_1x_coco.py'
VARIANTS = {
    'task': 'faster-rcnn_r50-doconv-task_fpn_1x_coco.py',
    'backbone': 'faster-rcnn_r50-doconv-backbone_fpn_1x_coco.py',
    'both': 'faster-rcnn_r50-doconv-both_fpn_1x_coco.py',
}
EXPECTED_DOCONV = {'baseline': 0, 'task': 22, 'backbone': 0, 'both': 22}


def _flatten(node, prefix=''):
    if isinstance(node, dict):
        items = {}
        for key, value in node.items():
            items.update(_flatten(value, f'{prefix}{key}.'))
        return items or {prefix[:-1]: {}}
    if isinstance(node, (list, tuple)):
        items = {}
        for index, value in enumerate(node):
            items.update(_flatten(value, f'{prefix}{index}.'))
        return items or {prefix[:-1]: node}
    return {prefix[:-1]: node}


def _allowed(path: str) -> bool:
    """The only changes the paper's protocol allows: the conversion switch,
    pretrained checkpoint, and the plugin's imports and hooks."""
    return (path in ('runner_type', 'doconv')
            or path.startswith(('custom_imports', 'custom_hooks',
                                'model.backbone.init_cfg',
                                'doconv_backbone_checkpoint')))


def _load(name):
    return Config.fromfile(config_path('faster_rcnn', name))


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_config_differs_from_baseline_only_in_conv_type(variant):
    baseline = _flatten(_load(BASELINE).to_dict())
    config = _flatten(_load(VARIANTS[variant]).to_dict())
    changed = {path for path in baseline.keys() | config.keys()
               if baseline.get(path, '<absent>') != config.get(
                   path, '<absent>')}
    assert changed, 'the variant should change something'
    assert all(_allowed(path) for path in changed), sorted(
        p for p in changed if not _allowed(p))
    # Same schedule, optimizer and pipelines as mmdet's config.
    for key in ('optim_wrapper', 'param_scheduler', 'train_cfg',
                'train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert _load(VARIANTS[variant])[key] == _load(BASELINE)[key], key


def test_baseline_is_mmdet_config_as_it_is():
    ours = _load(BASELINE).to_dict()
    import mmdet
    theirs = Config.fromfile(osp.join(
        osp.dirname(mmdet.__file__), '.mim', 'configs', 'faster_rcnn',
        'faster-rcnn_r50_fpn_1x_coco.py')).to_dict()
    # Inheriting through 'mmdet::' records the scope ('_scope_' keys and
    # 'mmdet.' type prefixes); nothing else may differ.
    def unscoped(flat):
        return {k: v[len('mmdet.'):] if isinstance(v, str)
                and v.startswith('mmdet.') else v for k, v in flat.items()
                if not k.endswith('_scope_')}

    assert unscoped(_flatten(ours)) == unscoped(_flatten(theirs))


@pytest.mark.parametrize('variant', ['baseline', *sorted(VARIANTS)])
def test_every_non_pointwise_conv_is_doconv(variant):
    name = BASELINE if variant == 'baseline' else VARIANTS[variant]
    cfg = _load(name)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = build_model(cfg)  # MODELS.build + the config's switch
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    doconv = [m for m in convs if isinstance(m, DOConv2d)]
    assert len(doconv) == EXPECTED_DOCONV[variant]
    pointwise = [m for m in convs if m.kernel_size == (1, 1)]
    assert pointwise and all(type(m) is nn.Conv2d for m in pointwise)
    if doconv:
        non_pointwise = [m for m in convs if m.kernel_size != (1, 1)]
        assert all(isinstance(m, DOConv2d) for m in non_pointwise)
        assert isinstance(model.rpn_head.rpn_conv, DOConv2d)


def _runner(name, work_dir, options, **overrides):
    cfg = _load(name)
    cfg.merge_from_dict(options)
    cfg.work_dir = str(work_dir)
    for key, value in overrides.items():
        cfg[key] = value
    return build_runner(cfg)


def test_doconv_task_trains_and_folded_evaluation_equals_unfolded(
        tmp_path, synthetic_data):
    options = detection_options(synthetic_data['coco'])
    work_dir = tmp_path / 'task'
    # mmdet's own train.py: the switch (runner_type) reaches every conv.
    train = run_tool(upstream_tool('mmdet', 'train.py'),
                     config_path('faster_rcnn', VARIANTS['task']),
                     '--work-dir', str(work_dir), *as_cli(options))
    assert 'DOConvRunner: converted 22 convs to DO-Conv' in \
        train.stdout + train.stderr
    checkpoint = work_dir / 'epoch_1.pth'
    deploy = work_dir / 'epoch_1_folded.pth'
    assert checkpoint.is_file() and deploy.is_file()
    state = load_checkpoint_file(str(checkpoint))['state_dict']
    assert sum(key.endswith('.D') for key in state) == 22
    assert any(state[k].abs().sum() > 0 for k in state if k.endswith('.D'))
    assert not any(k.endswith('.D') for k in load_checkpoint_file(
        str(deploy))['state_dict'])

    config = config_path('faster_rcnn', VARIANTS['task'])
    # Without --deploy: the model as trained, although the config lists
    # DOConvFoldHook (fold_test=True); with it: folded.
    unfolded = run_tool('tools/test.py', config, str(checkpoint),
                        '--work-dir', str(tmp_path / 'unfolded'), '--out',
                        str(tmp_path / 'unfolded.pkl'), *as_cli(options))
    folded = run_tool('tools/test.py', config, str(checkpoint), '--deploy',
                      '--work-dir', str(tmp_path / 'folded'), '--out',
                      str(tmp_path / 'folded.pkl'), *as_cli(options))
    folded_log = folded.stdout + folded.stderr
    unfolded_log = unfolded.stdout + unfolded.stderr
    assert 'folded 22 DO-Conv layers (max |Δ| on a probe batch: 0)' in \
        folded_log
    assert 'folded 22 DO-Conv' not in unfolded_log
    metrics = logged_metrics(unfolded_log, 'coco')
    assert 'coco/bbox_mAP' in metrics
    assert logged_metrics(folded_log, 'coco') == metrics
    # mmdet's own test.py with the switch config: the config's fold hook
    # (fold_test=True) evaluates the folded model, with the same metrics.
    upstream = run_tool(upstream_tool('mmdet', 'test.py'), config,
                        str(checkpoint), '--work-dir',
                        str(tmp_path / 'upstream'), *as_cli(options))
    upstream_log = upstream.stdout + upstream.stderr
    assert 'DOConvRunner: converted 22 convs' in upstream_log
    assert 'folded 22 DO-Conv layers' in upstream_log
    assert logged_metrics(upstream_log, 'coco') == metrics
    # The folded kernel is the one the unfolded eval forward composes, so the
    # detections are identical, not just close.
    with open(tmp_path / 'unfolded.pkl', 'rb') as f:
        expected = pickle.load(f)
    with open(tmp_path / 'folded.pkl', 'rb') as f:
        actual = pickle.load(f)
    assert len(expected) == len(actual) > 0
    for a, b in zip(expected, actual):
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(a['pred_instances'][key],
                               b['pred_instances'][key])


class InitialState(Hook):
    """The model's weights when training starts (after their init)."""

    def before_train(self, runner) -> None:
        self.state = {k: v.detach().clone()
                      for k, v in runner.model.state_dict().items()}


def assert_trained_plain(runner, hook: InitialState) -> None:
    """A baseline run: no DO-Conv layer anywhere, and the weights moved.

    Fails if the baseline carried the DO-Conv switch or layers (mutation:
    ``runner_type = 'DOConvRunner'`` in the baseline config) or did not
    train (mutation: ``optim_wrapper.optimizer.lr=0``)."""
    assert not any(isinstance(m, DOConv2d) for m in runner.model.modules())
    assert not any(k.endswith('.D') for k in runner.model.state_dict())
    trainable = [k for k, p in runner.model.named_parameters()
                 if p.requires_grad]
    moved = [k for k in trainable if not torch.equal(
        runner.model.state_dict()[k], hook.state[k])]
    # Not all: residual branches behind a zero-initialised last BN
    # (zero_init_residual) get their first gradients only once it moved.
    assert trainable and len(moved) > len(trainable) // 2, \
        sorted(set(trainable) - set(moved))


def test_baseline_trains_and_evaluates(tmp_path, synthetic_data):
    """Besides mAP in range: the baseline is plain and trained, and the
    final validation is what the val loop computes again."""
    runner = _runner(BASELINE, tmp_path,
                     detection_options(synthetic_data['coco']))
    initial = InitialState()
    runner.register_hook(initial)
    runner.train()
    assert_trained_plain(runner, initial)
    logged = runner.message_hub.get_scalar('val/coco/bbox_mAP').current()
    metrics = runner.val_loop.run()
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    assert metrics['coco/bbox_mAP'] == logged


def test_two_process_cpu_training_keeps_ranks_identical(
        tmp_path, synthetic_data):
    config = tmp_path / 'task_dump.py'
    config.write_text(
        f"_base_ = ['{config_path('faster_rcnn', VARIANTS['task'])}']\n"
        "custom_imports = dict(imports=['mmdoconv', 'rank_dump_hook'], "
        "allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='DOConvFoldHook'), "
        "dict(type='DumpDOConvParamsHook')]\n")
    options = detection_options(synthetic_data['coco'], train_images=8)
    result = run_tool('tools/dist_train.sh', str(config), '2', '--work-dir',
                      str(tmp_path), *as_cli(options),
                      env_extra=dict(PORT='29517', OMP_NUM_THREADS='1'))
    assert 'unused parameters' not in result.stderr
    ranks = [torch.load(tmp_path / f'rank{r}.pth') for r in (0, 1)]
    assert len(ranks[0]) == 2 * 22
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    assert any(v.abs().sum() > 0 for k, v in ranks[0].items()
               if k.endswith('.D'))


def test_amp_on_cpu_trains_with_finite_loss(tmp_path, synthetic_data):
    options = detection_options(synthetic_data['coco'])
    options['train_cfg.val_interval'] = 2  # no validation in this test
    result = run_tool('tools/train.py',
                      config_path('faster_rcnn', VARIANTS['task']), '--amp',
                      '--work-dir', str(tmp_path), *as_cli(options))
    assert 'CPUBf16OptimWrapper' in (tmp_path / osp.basename(
        VARIANTS['task'])).read_text()
    losses = [float(v) for v in re.findall(
        r'  loss: (\S+)', result.stdout + result.stderr)]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
