"""Deploy path: fold_checkpoint.py, plain configs, test.py --deploy, ONNX."""
import os.path as osp
import subprocess

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

import mmdoconv  # noqa: F401
from mmdoconv import DOConv2d, count_doconv
from mmdoconv.deploy import plain_config
from mmdoconv.utils.cli import build_model
from mmdoconv.deploy.export import (TensorGraph, export_onnx, onnx_difference,
                             node_histogram)

from runs import run_python  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

DET_CONFIG = """
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)
conv_cfg = dict(type='DOConv')
model = dict(
    backbone=dict(conv_cfg=conv_cfg, init_cfg=None),
    neck=dict(conv_cfg=conv_cfg))
custom_hooks = [dict(type='DOConvFoldHook')]
"""

SEG_CONFIG = """
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)
conv_cfg = dict(type='DOConv')
model = dict(
    pretrained=None,
    backbone=dict(conv_cfg=conv_cfg),
    decode_head=dict(conv_cfg=conv_cfg),
    auxiliary_head=dict(conv_cfg=conv_cfg))
"""

# Runs with mmdoconv unimportable: stock OpenMMLab code only.  (The tool
# server the tests fork from imports upstream libraries only.)
PLAIN_SCRIPT = """
import sys
assert not any(name.split('.')[0] == 'mmdoconv' for name in sys.modules)
sys.modules['mmdoconv'] = None  # any 'import mmdoconv' now fails
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
config, checkpoint, inputs, out = sys.argv[1:]
cfg = Config.fromfile(config)
init_default_scope(cfg.default_scope)
model = MODELS.build(cfg.model).eval()
state = torch.load(checkpoint, map_location='cpu', weights_only=True)
model.load_state_dict(state['state_dict'], strict=True)
x = torch.load(inputs)
def flat(value):
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in flat(item)]
with torch.no_grad():
    if hasattr(model, 'rpn_head'):
        feats = model.extract_feat(x)
        outs = list(feats) + flat(model.rpn_head(feats))
    else:
        outs = flat(model._forward(x))
torch.save(outs, out)
"""


def _build(config_path, scope):
    """The model as the Runner builds it (converted where the config has the
    switch)."""
    cfg = Config.fromfile(config_path)
    assert cfg.default_scope == scope
    with DefaultScope.overwrite_default_scope(scope):
        model = build_model(cfg)
    return cfg, model.eval()


def _perturb(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DOConv2d):
                module.D.copy_(0.1 * torch.randn(
                    module.D.shape, generator=generator))
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)


def _python(*args):
    """``python args...`` (a script) from the repository root."""
    return run_python(*args)


# The switch on a detector whose head builds nn.Conv2d directly.
RETINA_SWITCH_CONFIG = """
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)
runner_type = 'DOConvRunner'
model = dict(backbone=dict(init_cfg=None))
"""


@pytest.mark.parametrize('scope,config_text,expected_doconv', [
    ('mmdet', DET_CONFIG, 17 + 4),  # R50 stem + 16 3x3, 4 FPN 3x3
    # + 1 extra FPN conv (P6; P7 convs P6), 4 + 4 stacked head convs and the
    # hard-coded retina_cls / retina_reg
    ('mmdet', RETINA_SWITCH_CONFIG, 17 + 5 + 10),
    ('mmseg', SEG_CONFIG, 19 + 4 + 1),  # deep stem + 16, ASPP 3 + bottleneck, FCN 1
])
def test_fold_checkpoint_runs_on_stock_openmmlab(tmp_path, scope,
                                                 config_text,
                                                 expected_doconv):
    config = tmp_path / 'model_doconv.py'
    config.write_text(config_text)
    cfg, model = _build(str(config), scope)
    assert count_doconv(model) == expected_doconv
    _perturb(model)
    checkpoint = tmp_path / 'iter_8.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    out_dir = tmp_path / 'deploy'
    result = _python('tools/model_converters/fold_checkpoint.py', str(config), str(checkpoint),
                     str(out_dir))
    folded = out_dir / 'iter_8_folded.pth'
    plain = out_dir / 'model_doconv_plain.py'
    assert str(folded) in result.stdout and str(plain) in result.stdout
    text = plain.read_text()
    assert 'DOConv' not in text and 'mmdoconv' not in text

    x = torch.randn(1, 3, 64, 96)
    torch.save(x, tmp_path / 'x.pth')
    script = tmp_path / 'stock_openmmlab.py'
    script.write_text(PLAIN_SCRIPT)
    _python(str(script), str(plain), str(folded), str(tmp_path / 'x.pth'),
            str(tmp_path / 'out.pth'))
    theirs = torch.load(tmp_path / 'out.pth')
    with torch.no_grad():
        if hasattr(model, 'rpn_head'):  # the same outputs as PLAIN_SCRIPT's
            graph = TensorGraph(model, 'dense')
            graph.heads = ['rpn_head']
        else:
            graph = TensorGraph(model, 'tensor')
        ours = graph(x)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)

    # Never overwrite without being asked.
    with pytest.raises(subprocess.CalledProcessError) as error:
        _python('tools/model_converters/fold_checkpoint.py', str(config), str(checkpoint),
                str(out_dir))
    assert 'exists; pass --overwrite' in error.value.stderr


def test_plain_config_keeps_everything_else():
    cfg = Config(dict(
        custom_imports=dict(imports=['mmdoconv', 'other'],
                            allow_failed_imports=False),
        custom_hooks=[dict(type='DOConvFoldHook'), dict(type='EMAHook')],
        model=dict(backbone=dict(conv_cfg=dict(type='DOConv', D_mul=16),
                                 depth=50),
                   layer=dict(type='DOConv', in_channels=2, out_channels=4,
                              kernel_size=3)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.02))))
    plain = plain_config(cfg)
    assert plain.custom_imports.imports == ['other']
    assert [h['type'] for h in plain.custom_hooks] == ['EMAHook']
    assert plain.model.backbone.conv_cfg is None
    assert plain.model.backbone.depth == 50
    assert plain.model.layer == dict(type='Conv2d', in_channels=2,
                                     out_channels=4, kernel_size=3)
    assert plain.optim_wrapper == cfg.optim_wrapper
    assert cfg.model.backbone.conv_cfg.type == 'DOConv'  # input untouched


def test_onnx_export_is_the_plain_graph(tmp_path):
    config = tmp_path / 'det_doconv.py'
    config.write_text(DET_CONFIG)
    _, model = _build(str(config), 'mmdet')
    _perturb(model)
    plain_cfg = plain_config(Config.fromfile(str(config)))
    with DefaultScope.overwrite_default_scope('mmdet'):
        plain = MODELS.build(plain_cfg.model).eval()
    x = torch.randn(1, 3, 128, 160)
    messages = []
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    graph = export_onnx(model, x, str(tmp_path / 'doconv.onnx'),
                        log=messages.append)
    assert graph.folded == 21 and count_doconv(model) == 0
    # The failed tensor-mode export left the model in eval mode (it put it
    # in train mode, and the dense fallback then ran a train-mode forward)
    # and its buffers (BN statistics) as they were.
    assert not any(m.training for m in model.modules())
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), key
    # mmdet 3.3's two-stage tensor forward cannot be traced (data-dependent
    # proposals; its ONNX box decoding imports the gone mmdet.core): the
    # exporter says so and exports the dense part it finds by itself.
    assert graph.part == 'dense' and graph.heads == ['rpn_head']
    assert len(messages) == 1 and 'FasterRCNN' in messages[0] \
        and 'extract_feat + rpn_head' in messages[0]
    # Same weights in both: the exporter turns identical initializers into
    # Identity nodes, so only equal values give comparable histograms.
    plain.load_state_dict(model.state_dict(), strict=True)
    export_onnx(plain, x, str(tmp_path / 'plain.onnx'), log=messages.append)
    doconv_ops = node_histogram(str(tmp_path / 'doconv.onnx'))
    assert doconv_ops == node_histogram(str(tmp_path / 'plain.onnx'))
    assert 'Einsum' not in doconv_ops and 'MatMul' not in doconv_ops
    def convs(module):
        return sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())

    # The RPN head's three convs run once on each of the 5 FPN levels.
    assert doconv_ops['Conv'] == convs(plain.backbone) + convs(plain.neck) \
        + 5 * convs(plain.rpn_head)
    assert onnx_difference(graph, str(tmp_path / 'doconv.onnx'), x) < 1e-4
    # A second batch through the same graph: nothing input-specific baked in.
    assert onnx_difference(graph, str(tmp_path / 'doconv.onnx'),
                              torch.randn(1, 3, 128, 160)) < 1e-4


def test_export_onnx_tool(tmp_path):
    config = tmp_path / 'seg_doconv.py'
    config.write_text(SEG_CONFIG)
    _, model = _build(str(config), 'mmseg')
    _perturb(model)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'seg.pth')
    result = _python('tools/deployment/export_onnx.py', str(config),
                     str(tmp_path / 'seg.pth'), str(tmp_path / 'seg.onnx'),
                     '--shape', '64', '64')
    assert 'folded 24 DO-Conv layers; exported the mode=tensor forward (1 ' \
        'outputs)' in result.stdout
    assert "the same as the plain model's" in result.stdout
    difference = float(result.stdout.rsplit(': ', 1)[1])
    assert difference < 1e-4
    assert osp.getsize(tmp_path / 'seg.onnx') > 1e6


#: A value for each option DOConv2d adds to nn.Conv2d's arguments.
LAYER_OPTIONS = dict(D_mul='M+2xN+2', D_init='random', recompute_kernel=False)


def test_plain_config_strips_every_layer_and_switch_option():
    """Every argument DOConv2d takes beyond nn.Conv2d's, in a conv_cfg and
    in a full layer config, and every switch option, is gone from the
    deploy config; the stripped configs build with stock mmdet (before,
    ``recompute_kernel`` stayed and mmcv's Conv2d raised TypeError)."""
    import inspect

    from mmdoconv.engine.runner import SWITCH_OPTIONS
    added = set(inspect.signature(DOConv2d).parameters) - set(
        inspect.signature(torch.nn.Conv2d).parameters)
    assert added == set(LAYER_OPTIONS)  # a new option needs a value here
    cfg = Config(dict(
        runner_type='DOConvRunner',
        doconv=dict(include=['backbone'], exclude=['neck'], D_mul=16,
                    D_init='random', recompute_kernel=False,
                    max_d_params=10**6, kinds=['Conv2d']),
        model=dict(
            conv_cfg=dict(type='DOConv', **LAYER_OPTIONS),
            layer=dict(type='DOConv2d', in_channels=2, out_channels=4,
                       kernel_size=3, **LAYER_OPTIONS),
            others=[dict(type=name, in_channels=2, out_channels=4,
                         kernel_size=3, **LAYER_OPTIONS)
                    for name in ('DOConv1d', 'DOConv3d', 'DOConvTranspose2d',
                                 'DOConvTranspose3d')])))
    assert set(cfg.doconv) == set(SWITCH_OPTIONS)
    plain = plain_config(cfg)
    assert 'runner_type' not in plain and 'doconv' not in plain
    assert plain.model.conv_cfg is None
    assert plain.model.layer == dict(type='Conv2d', in_channels=2,
                                     out_channels=4, kernel_size=3)
    assert [layer['type'] for layer in plain.model.others] == [
        'Conv1d', 'Conv3d', 'deconv', 'deconv3d']
    assert all(set(layer) == {'type', 'in_channels', 'out_channels',
                              'kernel_size'} for layer in plain.model.others)
    from mmcv.cnn import build_conv_layer
    layer = build_conv_layer(plain.model.conv_cfg, 2, 4, 3)
    assert type(layer) is torch.nn.Conv2d
    with DefaultScope.overwrite_default_scope('mmdet'):
        assert type(MODELS.build(plain.model.layer)).__name__ == 'Conv2d'
        assert [type(MODELS.build(layer)).__name__
                for layer in plain.model.others] == [
            'Conv1d', 'Conv3d', 'ConvTranspose2d', 'ConvTranspose3d']
