"""DeepLabv3 with DO-Conv (paper Table 4) on synthetic Cityscapes and VOC aug."""
import copy
import re
from unittest import mock

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import DefaultScope
from torch import nn

import mmdoconv  # noqa: F401
from mmdoconv import DOConv2d, DOConvFoldHook, fold_doconv
from mmdoconv.utils.cli import build_model, build_runner
from runs import (as_cli, config_path, run_tool, segmentation_options,
                  upstream_tool)
from test_detection import InitialState, _flatten, assert_trained_plain

CONFIGS = {
    'cityscapes': dict(
        baseline='deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py',
        task='deeplabv3_r50-d8-doconv-task_4xb2-80k_cityscapes-512x1024.py',
        backbone='deeplabv3_r50-d8-doconv-backbone_4xb2-80k_cityscapes-'
        '512x1024.py',
        both='deeplabv3_r50-d8-doconv-both_4xb2-80k_cityscapes-512x1024.py'),
    'voc': dict(
        baseline='deeplabv3_r101-d8_4xb4-20k_voc12aug-512x512.py',
        task='deeplabv3_r101-d8-doconv-task_4xb4-20k_voc12aug-512x512.py',
        backbone='deeplabv3_r101-d8-doconv-backbone_4xb4-20k_voc12aug-'
        '512x512.py',
        both='deeplabv3_r101-d8-doconv-both_4xb4-20k_voc12aug-512x512.py'),
}
TASK_STAGE_DOCONV = {'cityscapes': 24, 'voc': 41}


def _load(dataset, variant):
    return Config.fromfile(config_path('deeplabv3',
                                       CONFIGS[dataset][variant]))


def _allowed(path: str) -> bool:
    return (path in ('runner_type', 'doconv', 'model.pretrained')
            or path.startswith(('custom_imports', 'custom_hooks',
                                'model.backbone.init_cfg',
                                'doconv_backbone_checkpoint')))


@pytest.mark.parametrize('dataset', sorted(CONFIGS))
@pytest.mark.parametrize('variant', ['task', 'backbone', 'both'])
def test_config_differs_from_baseline_only_in_conv_type(dataset, variant):
    baseline = _flatten(_load(dataset, 'baseline').to_dict())
    config = _flatten(_load(dataset, variant).to_dict())
    changed = {p for p in baseline.keys() | config.keys()
               if baseline.get(p, '<absent>') != config.get(p, '<absent>')}
    assert changed and all(_allowed(p) for p in changed), sorted(
        p for p in changed if not _allowed(p))


@pytest.mark.parametrize('dataset', sorted(CONFIGS))
@pytest.mark.parametrize('variant', ['baseline', 'task', 'backbone', 'both'])
def test_every_non_pointwise_conv_is_doconv(dataset, variant):
    cfg = _load(dataset, variant)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = build_model(cfg)  # MODELS.build + the config's switch
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    doconv = [m for m in convs if isinstance(m, DOConv2d)]
    expected = TASK_STAGE_DOCONV[dataset] if variant in ('task',
                                                         'both') else 0
    assert len(doconv) == expected
    assert all(type(m) is nn.Conv2d for m in convs if m.kernel_size == (1, 1))
    if expected:
        assert all(isinstance(m, DOConv2d) for m in convs
                   if m.kernel_size != (1, 1))
        dilations = sorted(m.dilation[0] for m in
                           model.decode_head.aspp_modules.modules()
                           if isinstance(m, DOConv2d))
        assert dilations == [12, 24, 36]


def _runner(dataset, variant, work_dir, options, **overrides):
    cfg = _load(dataset, variant)
    cfg.merge_from_dict(options)
    cfg.merge_from_dict(overrides)
    cfg.work_dir = str(work_dir)
    return build_runner(cfg)


@pytest.mark.parametrize('dataset', sorted(CONFIGS))
def test_doconv_task_trains_and_folded_miou_equals_unfolded(
        tmp_path, synthetic_data, dataset):
    options = segmentation_options(dataset, synthetic_data[dataset])
    runner = _runner(dataset, 'task', tmp_path / 'train', options)
    # One process: mmengine has reverted mmseg's SyncBN to BatchNorm.
    assert not any(isinstance(m, nn.SyncBatchNorm)
                   for m in runner.model.modules())
    runner.train()
    folded_val = runner.message_hub.get_scalar('val/mIoU').current()
    # Raw logits, not only mIoU (which a one-class model would also match):
    # the folded model gives the unfolded model's logits on a val batch.
    model = runner.model.eval()
    assert any(m.D.abs().sum() > 0 for m in model.modules()
               if isinstance(m, DOConv2d))
    data = model.data_preprocessor(next(iter(runner.val_dataloader)), False)
    folded_model = copy.deepcopy(model)
    assert fold_doconv(folded_model) == TASK_STAGE_DOCONV[dataset]
    with torch.no_grad():
        logits = model(**data, mode='tensor')
        torch.testing.assert_close(folded_model(**data, mode='tensor'),
                                   logits, rtol=0, atol=0)
    assert logits.std() > 0
    checkpoint = str(tmp_path / 'train' / 'iter_2.pth')
    assert (tmp_path / 'train' / 'iter_2_folded.pth').is_file()
    # One Runner without the fold hook and one with the config's hooks, each
    # testing both inference modes (the hook folds before every test and
    # restores the model after it).
    overrides = {'load_from': checkpoint}
    unfolded_runner = _runner(dataset, 'task', tmp_path / 'unfolded', options,
                              custom_hooks=[], **overrides)
    folded_runner = _runner(dataset, 'task', tmp_path / 'folded', options,
                            **overrides)
    assert not any(isinstance(h, DOConvFoldHook)
                   for h in unfolded_runner.hooks)
    fold_hook, = [h for h in folded_runner.hooks
                  if isinstance(h, DOConvFoldHook)]
    for mode in ('whole', 'slide'):
        test_cfg = dict(mode=mode)
        if mode == 'slide':
            test_cfg.update(crop_size=(48, 64), stride=(32, 48))
        results = []
        for runner in (unfolded_runner, folded_runner):
            runner.model.test_cfg = ConfigDict(test_cfg)
            model = runner.model
            with mock.patch.object(model, 'slide_inference',
                                   wraps=model.slide_inference) as slide, \
                    mock.patch.object(fold_hook, '_fold',
                                      wraps=fold_hook._fold) as fold:
                results.append(runner.test())
            assert slide.called == (mode == 'slide')
            assert fold.call_count == (1 if runner is folded_runner else 0)
        unfolded, folded = results
        assert 0.0 <= unfolded['mIoU'] <= 100.0
        assert folded == unfolded, mode
        if mode == 'whole':
            assert unfolded['mIoU'] == pytest.approx(folded_val, abs=1e-9)


@pytest.mark.parametrize('dataset', sorted(CONFIGS))
def test_baseline_trains_and_evaluates(tmp_path, synthetic_data, dataset):
    """Besides mIoU in range: the baseline is plain and trained (see
    :func:`test_detection.assert_trained_plain` for the mutations)."""
    options = segmentation_options(dataset, synthetic_data[dataset])
    runner = _runner(dataset, 'baseline', tmp_path, options)
    initial = InitialState()
    runner.register_hook(initial)
    runner.train()
    assert_trained_plain(runner, initial)
    assert 0.0 <= runner.message_hub.get_scalar('val/mIoU').current() <= 100


def test_folded_checkpoint_tests_through_plain_config(tmp_path,
                                                      synthetic_data):
    """mmseg's own tools: train.py with the switch config, test.py with the
    plain config and the folded checkpoint."""
    dataset = 'cityscapes'
    options = segmentation_options(dataset, synthetic_data[dataset])
    config = config_path('deeplabv3', CONFIGS[dataset]['task'])
    train = run_tool(upstream_tool('mmseg', 'train.py'), config,
                     '--work-dir', str(tmp_path / 'train'), *as_cli(options))
    assert 'DOConvRunner: converted 24 convs to DO-Conv' in \
        train.stdout + train.stderr
    checkpoint = str(tmp_path / 'train' / 'iter_2.pth')
    unfolded = _runner(dataset, 'task', tmp_path / 'unfolded', options,
                       custom_hooks=[], load_from=checkpoint).test()
    run_tool('tools/model_converters/fold_checkpoint.py', config, checkpoint,
             str(tmp_path / 'deploy'), *as_cli(options))
    plain_config = tmp_path / 'deploy' / (
        CONFIGS[dataset]['task'][:-3] + '_plain.py')
    assert 'DOConv' not in plain_config.read_text()
    result = run_tool(upstream_tool('mmseg', 'test.py'), str(plain_config),
                      str(tmp_path / 'deploy' / 'iter_2_folded.pth'),
                      '--work-dir', str(tmp_path / 'plain'))
    log = result.stdout + result.stderr
    miou = float(re.findall(r'mIoU: (-?[\d.]+)', log)[-1])
    assert miou == pytest.approx(unfolded['mIoU'], abs=0.01)  # log rounds


def test_two_process_cpu_training_with_syncbn_keeps_ranks_identical(
        tmp_path, synthetic_data):
    """The shipped configs use SyncBN, which torch runs on CUDA only: the
    CPU launch path turns it into CPUSyncBN (and says so) and the ranks
    agree.  One sample per rank, legal with SyncBN, trains (with BN each
    rank's image-pool branch saw 1 value per channel and BatchNorm raised)."""
    config = tmp_path / 'task_dump.py'
    config.write_text(
        f"_base_ = ['{config_path('deeplabv3', CONFIGS['cityscapes']['task'])}']\n"
        "custom_imports = dict(imports=['mmdoconv', 'rank_dump_hook'], "
        "allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='DOConvFoldHook'), "
        "dict(type='DumpDOConvParamsHook')]\n")
    assert "'SyncBN'" in Config.fromfile(str(config)).pretty_text
    options = segmentation_options('cityscapes', synthetic_data['cityscapes'],
                                   crop=(32, 64), iters=2)
    options['train_dataloader.batch_size'] = 1
    result = run_tool('tools/dist_train.sh', str(config), '2', '--work-dir',
                      str(tmp_path), *as_cli(options),
                      env_extra=dict(PORT='29519', OMP_NUM_THREADS='1'))
    assert 'SyncBN runs as CPUSyncBN (batch statistics reduced across ' \
        'ranks over gloo)' in result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f'rank{r}.pth') for r in (0, 1)]
    assert len(ranks[0]) == 2 * TASK_STAGE_DOCONV['cityscapes']
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    assert any(v.abs().sum() > 0 for k, v in ranks[0].items()
               if k.endswith('.D'))
