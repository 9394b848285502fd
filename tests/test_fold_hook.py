"""DOConvFoldHook through mmengine's Runner on a tiny model and dataset."""
import copy
import glob
import logging
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from torch import nn

from mmdoconv import DOConv2d, DOConvFoldHook, load_checkpoint_file
from toy import ToyDataset, ToyNet, toy_runner


class ValRecorder(Hook):
    """Records state around each val epoch, outside the fold hook's window."""
    priority = 'VERY_HIGH'  # before_val_epoch: before anything else runs

    def __init__(self):
        self.before, self.after, self.types_during_val = [], [], []

    @staticmethod
    def _snapshot(runner):
        model = runner.model
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        optim = copy.deepcopy(runner.optim_wrapper.optimizer.state_dict())
        layers = [m for m in model.modules() if isinstance(m, DOConv2d)]
        return params, optim, layers

    def before_val_epoch(self, runner):
        self.before.append(self._snapshot(runner))

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.types_during_val.append(
            {type(m) for m in runner.model.body if isinstance(m, nn.Conv2d)})

    def after_val(self, runner):  # after every hook's after_val_epoch
        self.after.append(self._snapshot(runner))


def _assert_same_state(first, second):
    params_a, optim_a, layers_a = first
    params_b, optim_b, layers_b = second
    assert params_a.keys() == params_b.keys()
    for key in params_a:
        assert torch.equal(params_a[key], params_b[key]), key
    for index, state in optim_a['state'].items():
        for name, value in state.items():
            assert torch.equal(value, optim_b['state'][index][name])
    assert all(a is b for a, b in zip(layers_a, layers_b))


def test_validation_runs_folded_and_training_resumes_bit_for_bit(tmp_path):
    recorder = ValRecorder()
    runner = toy_runner(tmp_path, custom_hooks=[
        dict(type='DOConvFoldHook'), recorder])
    runner.train()
    assert len(recorder.before) == 2  # val at iters 2 and 4
    for before, after in zip(recorder.before, recorder.after):
        _assert_same_state(before, after)
    assert all(types == {nn.Conv2d} for types in recorder.types_during_val)
    # D was trained, so the check above compared something non-trivial.
    layer = runner.model.body[0]
    assert isinstance(layer, DOConv2d) and layer.D.abs().sum() > 0


class LogitRecorder(Hook):
    """The logits of every validation batch."""

    def __init__(self):
        self.logits = []

    def after_val_iter(self, runner, batch_idx, data_batch=None,
                       outputs=None):
        self.logits.append(torch.stack([logit for logit, _ in outputs]))


def _toy_with_random_d(seed=0):
    torch.manual_seed(seed)
    model = ToyNet()
    with torch.no_grad():  # far from D = I, where W and W' would agree
        for layer in model.modules():
            if isinstance(layer, DOConv2d):
                layer.D.normal_(0, 0.5)
    return model


def test_folded_validation_equals_unfolded(tmp_path):
    """Validation through the hook's folded layers gives the unfolded
    model's logits, from a D far from the identity.  Fails if the fold
    wrote W instead of W' (mutation: ``DOConv2d.fold`` copying
    ``self.weight``): the logits then differ by far more than round-off."""
    fold_logits, plain_logits = LogitRecorder(), LogitRecorder()
    with_fold = toy_runner(tmp_path / 'fold', model=_toy_with_random_d(),
                           custom_hooks=[dict(type='DOConvFoldHook'),
                                         fold_logits])
    without = toy_runner(tmp_path / 'plain', model=_toy_with_random_d(),
                         custom_hooks=[plain_logits])
    with_fold.train()
    without.train()
    assert len(fold_logits.logits) == len(plain_logits.logits) == 8
    for folded, unfolded in zip(fold_logits.logits, plain_logits.logits):
        torch.testing.assert_close(folded, unfolded, rtol=1e-5, atol=1e-6)
    # The check compares something that W alone would not give.
    model = without.model.eval()
    x = ToyDataset()[0]['inputs'][None]
    with torch.no_grad():
        with_w = nn.functional.conv2d(x, model.body[0].weight,
                                      model.body[0].bias, padding=1)
        assert (with_w - model.body[0](x)).abs().max() > 0.1
    # The hook left training exactly as it would have been.
    for (key, a), b in zip(with_fold.model.state_dict().items(),
                           without.model.state_dict().values()):
        assert torch.equal(a, b), key


def test_test_logs_probe_line_and_metric_equals_unfolded(tmp_path):
    trained = toy_runner(tmp_path / 'train')
    trained.train()
    checkpoint = osp.join(tmp_path / 'train', 'iter_4.pth')
    unfolded = toy_runner(tmp_path / 'plain', load_from=checkpoint).test()
    hook = DOConvFoldHook()
    runner = toy_runner(tmp_path / 'fold', load_from=checkpoint,
                        custom_hooks=[hook])
    folded = runner.test()
    assert folded == unfolded
    log = open(glob.glob(str(tmp_path / 'fold' / '*' / '*.log'))[0]).read()
    line = [l for l in log.splitlines() if 'folded 2 DO-Conv layers' in l]
    assert len(line) == 1 and 'max |Δ| on a probe batch: ' in line[0]
    delta = float(line[0].rsplit(': ', 1)[1].rstrip(')'))
    assert 0 <= delta < 1e-5
    # Restored after the test loop.
    assert isinstance(runner.model.body[0], DOConv2d)


def test_deploy_checkpoint_loads_strict_into_plain_model(tmp_path):
    hook = DOConvFoldHook()
    runner = toy_runner(tmp_path, custom_hooks=[hook])
    runner.train()
    assert hook.folded_checkpoint == osp.join(tmp_path, 'iter_4_folded.pth')
    deploy = load_checkpoint_file(hook.folded_checkpoint)
    assert not any(k.endswith('.D') for k in deploy['state_dict'])
    assert 'optimizer' not in deploy and 'message_hub' not in deploy
    plain = ToyNet(conv=nn.Conv2d).eval()
    plain.load_state_dict(deploy['state_dict'], strict=True)
    doconv = ToyNet().eval()
    doconv.load_state_dict(load_checkpoint_file(
        osp.join(tmp_path, 'iter_4.pth'))['state_dict'], strict=True)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), doconv(x), rtol=1e-5,
                                   atol=1e-6)


def test_with_ema_hook_validates_the_folded_ema_weights(tmp_path):
    ema = dict(type='EMAHook', momentum=0.5)
    with_fold = toy_runner(tmp_path / 'fold', custom_hooks=[
        ema, dict(type='DOConvFoldHook')])
    without = toy_runner(tmp_path / 'plain', custom_hooks=[ema])
    with_fold.train()
    without.train()
    for key in ('accuracy', 'predictions'):
        assert with_fold.message_hub.get_scalar(f'val/toy/{key}').data[0] \
            .tolist() == without.message_hub.get_scalar(
                f'val/toy/{key}').data[0].tolist()
    for (key, a), b in zip(with_fold.model.state_dict().items(),
                           without.model.state_dict().values()):
        assert torch.equal(a, b), key
    # The deploy checkpoint holds the folded EMA weights.
    ema_model = ToyNet().eval()
    ema_model.load_state_dict(load_checkpoint_file(
        osp.join(tmp_path / 'fold', 'iter_4.pth'))['state_dict'])
    plain = ToyNet(conv=nn.Conv2d).eval()
    plain.load_state_dict(load_checkpoint_file(osp.join(
        tmp_path / 'fold', 'iter_4_folded.pth'))['state_dict'], strict=True)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ema_model(x), rtol=1e-5,
                                   atol=1e-6)


def test_resume_keeps_d_and_w(tmp_path):
    first = toy_runner(tmp_path, max_iters=2,
                       custom_hooks=[dict(type='DOConvFoldHook')])
    first.train()
    saved = {k: v.clone() for k, v in first.model.state_dict().items()}
    assert saved['body.0.D'].abs().sum() > 0
    resumed = toy_runner(tmp_path, max_iters=4, resume=True,
                         custom_hooks=[dict(type='DOConvFoldHook')])
    resumed.load_or_resume()  # what train() does first
    assert resumed.iter == 2
    assert isinstance(resumed.model.body[0], DOConv2d)
    for key, value in saved.items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    resumed.train()
    assert resumed.iter == 4


def test_model_without_doconv_warns_once(tmp_path, caplog):
    runner = toy_runner(tmp_path, model=ToyNet(conv=nn.Conv2d),
                        custom_hooks=[dict(type='DOConvFoldHook')])
    logger = MMLogger.get_current_instance()
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        runner.train()
        runner.test()
    finally:
        logger.removeHandler(handler)
    warnings = [m for m in messages if 'no DO-Conv layer' in m]
    assert len(warnings) == 1
    assert not glob.glob(str(tmp_path / '*_folded.pth'))


def test_bad_suffix():
    with pytest.raises(ValueError, match="got 'a/b'"):
        DOConvFoldHook(suffix='a/b')


class _FinalState(Hook):
    """Records parameters, optimizer state and the RNG streams after train."""

    def after_train(self, runner):
        self.params = {k: v.clone() for k, v in
                       runner.model.state_dict().items()}
        self.optim = copy.deepcopy(runner.optim_wrapper.optimizer.state_dict())
        self.rng = torch.get_rng_state()


def test_folded_validation_leaves_the_run_bit_for_bit(tmp_path):
    """Same seed, fold_val on and off: the same run, RNG streams included
    (a folded conv built with nn.Conv2d's random init advanced the RNG)."""
    finals = []
    for fold_val in (False, True):
        final = _FinalState()
        runner = toy_runner(tmp_path / str(fold_val), max_iters=6,
                            custom_hooks=[dict(type='DOConvFoldHook',
                                               fold_val=fold_val), final])
        runner.train()
        finals.append(final)
    plain, folded = finals
    assert torch.equal(plain.rng, folded.rng)
    assert plain.params.keys() == folded.params.keys()
    for key in plain.params:
        assert torch.equal(plain.params[key], folded.params[key]), key
    for index, state in plain.optim['state'].items():
        for name, value in state.items():
            assert torch.equal(value, folded.optim['state'][index][name])


def test_fold_draws_no_random_numbers():
    layer = DOConv2d(4, 6, 3, groups=2, D_mul=11)
    with torch.no_grad():
        layer.D.normal_()
    before = torch.get_rng_state()
    plain = layer.fold()
    assert torch.equal(before, torch.get_rng_state())
    x = torch.randn(2, 4, 7, 7)
    assert torch.allclose(plain(x), layer(x), atol=1e-5)


def test_tta_model_folds_without_a_probe_warning(caplog):
    """mmdet/mmseg --tta wraps the model in a BaseTTAModel, whose batches are
    lists of augmentations: no probe, no warning, still folded."""
    from types import SimpleNamespace

    from mmengine.model import BaseTTAModel

    class _TTA(BaseTTAModel):

        def merge_preds(self, data_samples_list):
            return data_samples_list[0]

    model = _TTA(module=ToyNet())
    hook = DOConvFoldHook()
    runner = SimpleNamespace(model=model)
    batch = dict(inputs=[[torch.randn(3, 8, 8)]], data_samples=[[None]])
    with caplog.at_level(logging.DEBUG):
        hook.before_test_iter(runner, 0, batch)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(isinstance(m, DOConv2d) for m in model.modules())
    hook.after_test_epoch(runner)
    assert isinstance(model.module.body[0], DOConv2d)
