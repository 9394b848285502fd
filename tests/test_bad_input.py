"""Bad input gets one clear error naming the value, before any work starts.

Each case states what it passes and a phrase the error must contain; the
command-line cases also check for one ``error:`` line (no traceback) and a
non-zero exit, and that nothing was overwritten.
"""
import os
import os.path as osp
import runpy
import signal
import sys

import pytest
import torch
from mmengine.registry import MODELS
from mmengine.runner import load_checkpoint

from mmdoconv import (DOConv, DOConv2d, IncompatibleCheckpointError,
                      fold_state_dict, save_folded_checkpoint)
from runs import ROOT, config_path

RESNET = config_path('resnet', 'resnet50_8xb32_in1k.py')
RESNET_DOCONV = config_path('resnet', 'resnet50-doconv_8xb32_in1k.py')


def _entry(**overrides):
    layer = DOConv2d(4, 6, 3, groups=2, D_mul=11)
    state = dict(layer.state_dict())
    state.update(overrides)
    return {k: v for k, v in state.items() if v is not None}


FOLD_CASES = {
    'not a mapping': ([1, 2], TypeError, 'expects a state dict'),
    'missing weight': (_entry(weight=None), ValueError, 'needs weight'),
    'D a list': (_entry(D=[1, 2]), ValueError, 'D must be a 3-D'),
    'D 2-D': (_entry(D=torch.zeros(9, 11)), ValueError, 'D must be a 3-D'),
    'weight numpy': (_entry(weight=torch.zeros(6, 2, 11).numpy()),
                     ValueError, 'needs weight'),
    'kernel_hw list': (_entry(kernel_hw=[3, 3]), ValueError, 'kernel_hw'),
    'kernel_hw float': (_entry(kernel_hw=torch.tensor([3., 3.])),
                        ValueError, 'integer tensor'),
    'kernel_hw 3 entries': (_entry(kernel_hw=torch.tensor([3, 3, 1])),
                            ValueError, 'two positive'),
    'kernel_hw lies': (_entry(kernel_hw=torch.tensor([2, 3])), ValueError,
                       '9 kernel positions'),
    'kernel_hw missing': (_entry(kernel_hw=None), ValueError,
                          'kernel_hw, which records'),
    'dtypes differ': (_entry(weight=torch.zeros(6, 2, 11,
                                                dtype=torch.float64)),
                      ValueError, 'same dtype'),
    'groups do not divide': (_entry(weight=torch.zeros(6, 3, 11)),
                             ValueError, 'inconsistent DO-Conv entry'),
    '0-channel weight': ({'weight': torch.zeros(0, 2, 3, 3),
                          'D': torch.zeros(4, 9, 9)}, ValueError,
                         'inconsistent'),
}


@pytest.mark.parametrize('case', sorted(FOLD_CASES))
def test_fold_state_dict_refuses_malformed_entries(case):
    state_dict, error, phrase = FOLD_CASES[case]
    with pytest.raises(error, match=phrase):
        fold_state_dict(state_dict)


LAYER_CASES = {
    'in_channels=True': (dict(in_channels=True), 'in_channels must be'),
    'out_channels=0': (dict(out_channels=0), 'out_channels must be'),
    'groups=0': (dict(groups=0), 'groups must be'),
    'padding=-1': (dict(padding=-1), 'padding must be'),
    'padding 3-tuple': (dict(padding=(1, 1, 1)), r'padding must be'),
    "padding='full'": (dict(padding='full'), 'padding must be'),
    'stride=0': (dict(stride=0), 'stride must be'),
    'D_mul=8': (dict(D_mul=8), 'D_mul must be >= M\\*N = 9'),
    "D_mul='3M'": (dict(D_mul='3M'), 'D_mul rule must be'),
    "D_init='zeros'": (dict(D_init='zeros'), 'D_init must be one of'),
}


@pytest.mark.parametrize('layer_class', [DOConv2d, DOConv])
@pytest.mark.parametrize('case', sorted(LAYER_CASES))
def test_layer_refuses_bad_arguments_at_construction(case, layer_class):
    overrides, phrase = LAYER_CASES[case]
    kwargs = dict(in_channels=4, out_channels=4, kernel_size=3)
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=phrase):
        layer_class(**kwargs)


def test_pointwise_doconv_checks_its_options_too():
    """A 1x1 conv_cfg=DOConv builds a plain conv, but still checks D_init."""
    with pytest.raises(ValueError, match="D_init must be one of .*'zeros'"):
        MODELS.build(dict(type='DOConv', in_channels=4, out_channels=4,
                          kernel_size=1, D_init='zeros'))
    assert type(MODELS.build(dict(type='DOConv', in_channels=4,
                                  out_channels=4, kernel_size=1))) is \
        torch.nn.Conv2d


def test_every_registered_conv_type_is_a_class():
    """mmcv's build_conv_layer tests check isinstance against each entry."""
    from mmcv.cnn import build_conv_layer
    for name, module in MODELS.module_dict.items():
        assert isinstance(module, type), name
    layer = build_conv_layer(dict(type='DOConv'), 4, 8, 3)
    assert isinstance(layer, MODELS.get('DOConv')) and layer.D is not None


def test_loading_another_d_mul_names_the_mismatch(tmp_path):
    trained = torch.nn.Sequential(DOConv2d(4, 4, 3, D_mul=16))
    torch.save({'state_dict': trained.state_dict()}, tmp_path / 'dmul16.pth')
    other = torch.nn.Sequential(DOConv2d(4, 4, 3))
    with pytest.raises(IncompatibleCheckpointError,
                       match=r'0\.D: .*\(D_mul=9\); build the model with '
                       r'D_mul=16'):
        load_checkpoint(other, str(tmp_path / 'dmul16.pth'))


@pytest.mark.parametrize('shape, phrase', [
    ((4, 9, 8), 'its D_mul=8 is below M*N = 9, which no DO-Conv layer has'),
    ((4, 4, 4), 'it belongs to a kernel of 4 positions, not this 3x3 kernel'),
    ((2, 9, 9), 'it is not a D of this layer (4 inputs)')])
def test_a_d_of_another_shape_is_named_without_a_wrong_hint(shape, phrase):
    """The hint never names a D_mul the layer itself refuses (it said
    ``D_mul=8`` for a 3x3 layer)."""
    model = torch.nn.Sequential(DOConv2d(4, 4, 3))
    state = dict(model.state_dict(), **{'0.D': torch.ones(shape)})
    with pytest.raises(IncompatibleCheckpointError) as error:
        model.load_state_dict(state)
    assert phrase in str(error.value)
    assert 'build the model with' not in str(error.value)


def test_kernel_hw_that_is_not_a_tensor_is_named():
    model = torch.nn.Sequential(DOConv2d(4, 4, 3, D_mul=12))
    state = dict(model.state_dict(), **{'0.kernel_hw': [3, 3]})
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"0\.kernel_hw: expected a tensor of 2 ints "
                       r"\(M, N\), but the checkpoint holds list \[3, 3\]"):
        model.load_state_dict(state)


def test_cfg_options_take_the_papers_d_mul_spelling():
    """``--cfg-options ...D_mul='(M+2)*(N+2)'`` reached the layer as the
    mangled tuple ``('M+2)*(N+2',)``; the paper's spelling is a rule name."""
    import argparse

    from mmdoconv.utils.cli import DictAction, build_model, load_config
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    for spelling in ('(M+2)*(N+2)', "'(M+2)*(N+2)'", 'M+2xN+2'):
        args = parser.parse_args(
            ['--cfg-options', f'model.backbone.conv_cfg.D_mul={spelling}',
             'model.head.num_classes=7'])
        assert args.cfg_options == {
            'model.backbone.conv_cfg.D_mul': spelling.strip("'"),
            'model.head.num_classes': 7}
    model = build_model(load_config(RESNET_DOCONV, args.cfg_options))
    d_muls = {m.kernel_size: m.D_mul for m in model.modules()
              if isinstance(m, DOConv2d)}
    assert d_muls == {(7, 7): 81, (3, 3): 25}


def _drop_logger_handlers():
    """mmengine's loggers keep a handler on the stream capsys gave them; the
    next in-process run must not write to that closed stream."""
    from mmengine.logging import MMLogger
    for logger in list(MMLogger._instance_dict.values()):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    MMLogger._instance_dict.clear()


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run tools/<path>.py in this process; return (exit code, stderr)."""
    handler = signal.getsignal(signal.SIGTERM)
    _drop_logger_handlers()

    def run(tool, *args):
        monkeypatch.setattr(sys, 'argv', [tool, *map(str, args)])
        code = 0
        try:
            runpy.run_path(osp.join(ROOT, 'tools', tool), run_name='__main__')
        except SystemExit as exit_:
            code = exit_.code
        finally:
            signal.signal(signal.SIGTERM, handler)
            _drop_logger_handlers()
        return code, capsys.readouterr().err

    return run


def _assert_one_line_error(result, *phrases):
    code, err = result
    assert code not in (0, None), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope='module')
def doconv_resnet_checkpoint(tmp_path_factory):
    """An unfolded DO-Conv ResNet-50 checkpoint with non-zero D."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    import mmpretrain.models  # noqa: F401
    cfg = Config.fromfile(RESNET_DOCONV)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DOConv2d):
                module.D.normal_(0, 0.1)
    path = tmp_path_factory.mktemp('ckpt') / 'doconv_r50.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def test_cfg_options_entry_without_a_value_is_one_line(run_cli, tmp_path):
    _assert_one_line_error(
        run_cli('model_converters/fold_checkpoint.py', RESNET_DOCONV,
                tmp_path / 'x.pth', tmp_path, '--cfg-options', 'model.x'),
        "--cfg-options entries must be KEY=VALUE, but got 'model.x'")


def test_fold_checkpoint_refuses_an_out_dir_under_a_file(
        run_cli, tmp_path, doconv_resnet_checkpoint):
    (tmp_path / 'file').write_text('precious')
    _assert_one_line_error(
        run_cli('model_converters/fold_checkpoint.py', RESNET_DOCONV,
                doconv_resnet_checkpoint, tmp_path / 'file' / 'deploy'),
        'OUT_DIR', 'cannot be a folder', 'is a file')
    assert (tmp_path / 'file').read_text() == 'precious'


def test_export_onnx_refuses_a_missing_output_folder(
        run_cli, tmp_path, doconv_resnet_checkpoint):
    """It was reported as "the mode='tensor' forward cannot be exported",
    then the dense fallback ran the model in train mode."""
    _assert_one_line_error(
        run_cli('deployment/export_onnx.py', RESNET_DOCONV,
                doconv_resnet_checkpoint, tmp_path / 'no' / 'model.onnx',
                '--shape', '32', '32'),
        'the folder of OUT', 'does not exist')


def test_export_onnx_names_a_d_of_another_shape_in_one_line(
        run_cli, tmp_path, doconv_resnet_checkpoint):
    state = torch.load(doconv_resnet_checkpoint)['state_dict']
    state['backbone.conv1.D'] = torch.zeros(3, 49, 40)
    torch.save({'state_dict': state}, tmp_path / 'bad.pth')
    _assert_one_line_error(
        run_cli('deployment/export_onnx.py', RESNET_DOCONV,
                tmp_path / 'bad.pth', tmp_path / 'model.onnx', '--shape',
                '32', '32'),
        'backbone.conv1.D', 'D_mul=40 is below M*N = 49')
    assert not (tmp_path / 'model.onnx').exists()


def test_test_py_refuses_checkpoint_without_weights(run_cli, tmp_path):
    torch.save({'meta': 'x'}, tmp_path / 'meta_only.pth')
    _assert_one_line_error(
        run_cli('test.py', RESNET, tmp_path / 'meta_only.pth', '--work-dir',
                tmp_path), 'meta_only.pth', 'not a model checkpoint')


def test_test_py_refuses_checkpoint_of_another_model(run_cli, tmp_path):
    torch.save({'state_dict': {'head.fc.weight': torch.zeros(2, 2)}},
               tmp_path / 'other.pth')
    _assert_one_line_error(
        run_cli('test.py', RESNET, tmp_path / 'other.pth', '--work-dir',
                tmp_path), 'not a checkpoint of the model', 'missing')


def test_train_py_refuses_a_work_dir_that_holds_a_run(run_cli, tmp_path):
    (tmp_path / 'epoch_1.pth').write_bytes(b'precious')
    _assert_one_line_error(
        run_cli('train.py', RESNET, '--work-dir', tmp_path),
        str(tmp_path), '--resume', '--overwrite')
    assert (tmp_path / 'epoch_1.pth').read_bytes() == b'precious'


def test_train_py_resume_from_folded_checkpoint_is_refused(
        run_cli, tmp_path, doconv_resnet_checkpoint):
    folded = tmp_path / 'folded.pth'
    save_folded_checkpoint(torch.load(doconv_resnet_checkpoint), str(folded))
    _assert_one_line_error(
        run_cli('train.py', RESNET, '--resume', folded, '--work-dir',
                tmp_path / 'run'), 'folded deploy checkpoint',
        'load_from=')


def test_export_onnx_refuses_to_overwrite(run_cli, tmp_path,
                                          doconv_resnet_checkpoint):
    out = tmp_path / 'model.onnx'
    out.write_bytes(b'precious')
    _assert_one_line_error(
        run_cli('deployment/export_onnx.py', RESNET_DOCONV, doconv_resnet_checkpoint,
                out), 'model.onnx', '--overwrite')
    assert out.read_bytes() == b'precious'


def test_synthetic_data_never_touches_real_data(run_cli, tmp_path):
    real = tmp_path / 'coco' / 'annotations'
    real.mkdir(parents=True)
    (real / 'instances_train2017.json').write_text('{"real": true}')
    _assert_one_line_error(
        run_cli('misc/make_synthetic_data.py', 'coco', '--data-dir', tmp_path,
                '--force'), 'did not write')
    assert (real / 'instances_train2017.json').read_text() == \
        '{"real": true}'


@pytest.mark.parametrize('tool,args,phrases', [
    ('model_converters/fold_checkpoint.py', ['{config}', '{empty}', '{tmp}/out'],
     ['empty.pth', 'not a readable PyTorch checkpoint']),
    ('model_converters/fold_checkpoint.py', ['{config}', '{text}', '{tmp}/out'],
     ['text.pth', 'not a readable PyTorch checkpoint']),
    ('model_converters/fold_checkpoint.py', ['{config}', '{random}', '{tmp}/out'],
     ['random.pth', 'not a readable PyTorch checkpoint']),
    ('model_converters/fold_checkpoint.py',
     ['{config}', '{not_a_model}', '{tmp}/out'],
     ['not_a_model.pth', 'not a model checkpoint']),
    ('model_converters/fold_checkpoint.py', ['{syntax}', '{empty}', '{tmp}/out'],
     ['broken.py', 'not valid Python']),
    ('model_converters/fold_checkpoint.py', ['{config}', '{tmp}/missing.pth', '{tmp}/out'],
     ['missing.pth', 'does not exist']),
    ('train.py', ['{tmp}/missing.py'], ['missing.py', 'does not exist']),
    ('train.py', ['{syntax}'], ['broken.py', 'line 1']),
    ('test.py', ['{config}', '{random}'], ['random.pth']),
    ('test.py', ['{config}', '{empty}', '--out', 'x.json'],
     ['--out', 'x.json']),
    ('analysis_tools/benchmark.py', ['--repeats', '0'], ['--repeats', '0']),
    ('analysis_tools/benchmark.py', ['--batch', '-1'], ['--batch', '-1']),
    ('deployment/export_onnx.py', ['{config}', '{empty}', '{tmp}/x.txt'],
     ['x.txt', '.onnx']),
    ('analysis_tools/visualize_kernels.py', ['{config}', '{random}', '{tmp}/x.png'],
     ['random.pth']),
    ('analysis_tools/doconv_census.py', ['mmdet::no_such_family/*.py'],
     ['mmdet::no_such_family/*.py', 'matches no file']),
    ('analysis_tools/doconv_census.py', ['mmfoo::resnet/*.py'],
     ['mmfoo', "['mmdet', 'mmpose', 'mmpretrain', 'mmseg']"]),
    ('analysis_tools/doconv_census.py', ['{config}', '--out', '{config}'],
     ['exists; pass --overwrite']),
    ('analysis_tools/doconv_census.py', ['{config}', '--max-d-params', '-5'],
     ['--max-d-params must be an int >= 0', 'got -5']),
])
def test_command_line_bad_input_is_one_line(tool, args, phrases, run_cli,
                                            tmp_path):
    files = dict(
        config=RESNET_DOCONV, tmp=tmp_path, empty=tmp_path / 'empty.pth',
        text=tmp_path / 'text.pth', random=tmp_path / 'random.pth',
        syntax=tmp_path / 'broken.py')
    files['empty'].write_bytes(b'')
    files['text'].write_text('not a checkpoint\n')
    files['random'].write_bytes(os.urandom(2048))
    files['syntax'].write_text('model = dict(type=\n')
    files['not_a_model'] = tmp_path / 'not_a_model.pth'
    torch.save({'state_dict': 'x', 'meta': {}}, files['not_a_model'])
    _assert_one_line_error(
        run_cli(tool, *[arg.format(**files) for arg in args]), *phrases)


@pytest.mark.parametrize('args', [[], ['only_a_config.py'],
                                  ['{config}', 'two']])
def test_dist_train_sh_checks_its_arguments(args, tmp_path):
    import subprocess
    result = subprocess.run(
        ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'),
         *[a.format(config=RESNET) for a in args]],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith('error: ') and len(
        result.stderr.strip().splitlines()) == 1
