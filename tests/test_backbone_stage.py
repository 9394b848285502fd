"""The backbone stage: DO-Conv ImageNet pre-training with mmpretrain, and the
bridge from its checkpoints into the detection and segmentation configs."""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch import nn

import mmdoconv  # noqa: F401
from mmdoconv import DOConv2d, count_doconv, load_checkpoint_file
from mmdoconv.utils.cli import build_model
from runs import as_cli, classification_options, config_path, run_tool
from test_detection import _flatten

PAIRS = {
    'resnet50': 'resnet50-doconv_8xb32_in1k.py',
    'resnetv1c50': 'resnetv1c50-doconv_8xb32_in1k.py',
    'resnetv1c101': 'resnetv1c101-doconv_8xb32_in1k.py',
}


@pytest.mark.parametrize('name', sorted(PAIRS))
def test_doconv_config_differs_from_baseline_only_in_conv_type(name):
    baseline = _flatten(Config.fromfile(
        config_path('resnet', f'{name}_8xb32_in1k.py')).to_dict())
    config = _flatten(Config.fromfile(config_path('resnet',
                                                  PAIRS[name])).to_dict())
    changed = {p for p in baseline.keys() | config.keys()
               if baseline.get(p, '<absent>') != config.get(p, '<absent>')}
    allowed = [p for p in changed
               if 'conv_cfg' in p or p.startswith(('custom_imports',
                                                   'custom_hooks'))]
    assert 'model.backbone.conv_cfg.type' in changed
    assert sorted(allowed) == sorted(changed)

def _pretrain(name, tmp_path, synthetic_data):
    work_dir = tmp_path / name
    run_tool('tools/train.py', config_path('resnet', PAIRS[name]),
             '--work-dir', str(work_dir),
             *as_cli(classification_options(synthetic_data['imagenet'])))
    checkpoint = work_dir / 'epoch_1.pth'
    state = load_checkpoint_file(str(checkpoint))['state_dict']
    d_keys = [k for k in state if k.endswith('.D')]
    assert d_keys and any(state[k].abs().sum() > 0 for k in d_keys)
    return str(checkpoint), state


def _reference_backbone(state, backbone_type):
    """The pre-trained backbone itself, built by mmpretrain."""
    from mmpretrain.registry import MODELS

    # In mmpretrain's scope whatever default scope an earlier test's Runner
    # left behind (one left 'mmengine', whose registry has no ResNet).
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        backbone = MODELS.build(dict(type=backbone_type, depth=50,
                                     conv_cfg=dict(type='DOConv'),
                                     out_indices=(0, 1, 2, 3)))
    backbone.load_state_dict({k[len('backbone.'):]: v for k, v in
                              state.items() if k.startswith('backbone.')},
                             strict=True)
    backbone.eval()
    return backbone


def _task_backbone(config, checkpoint, scope, variant_expects_doconv):
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    with DefaultScope.overwrite_default_scope(scope):
        model = build_model(cfg)  # converted by the config's switch, then
        model.init_weights()      # initialised, as the Runner does
    backbone = model.backbone
    assert (count_doconv(backbone) > 0) == variant_expects_doconv
    backbone.eval()
    return backbone


def _assert_pretrained_d(backbone, state):
    layers = [(n, m) for n, m in backbone.named_modules()
              if isinstance(m, DOConv2d)]
    assert layers
    pretrained_d = [v for k, v in state.items()
                    if k.startswith('backbone.') and k.endswith('.D')]
    for name, layer in layers:
        assert layer.D.abs().sum() > 0, name  # not the D = I of a fresh layer
        assert any(torch.equal(layer.D, d) for d in pretrained_d), name


def test_detection_bridge(tmp_path, synthetic_data):
    checkpoint, state = _pretrain('resnet50', tmp_path, synthetic_data)
    reference = _reference_backbone(state, 'ResNet')
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = reference(x)
    for variant, doconv in (('backbone', False), ('both', True)):
        config = config_path(
            'faster_rcnn', f'faster-rcnn_r50-doconv-{variant}_fpn_1x_coco.py')
        backbone = _task_backbone(config, checkpoint, 'mmdet', doconv)
        with torch.no_grad():
            features = backbone(x)
        assert len(features) == 4
        for ours, theirs in zip(features, expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        if doconv:
            _assert_pretrained_d(backbone, state)
        else:
            assert not any(isinstance(m, DOConv2d)
                           for m in backbone.modules())


def test_segmentation_bridge(tmp_path, synthetic_data):
    """mmseg's ResNetV1c-D8 differs from the classifier's after layer1
    (dilated stages), so the stem and layer1 features are compared."""
    checkpoint, state = _pretrain('resnetv1c50', tmp_path, synthetic_data)
    reference = _reference_backbone(state, 'ResNetV1c')
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = reference(x)[0]
    for variant, doconv in (('backbone', False), ('both', True)):
        config = config_path(
            'deeplabv3', f'deeplabv3_r50-d8-doconv-{variant}_4xb2-80k_'
            'cityscapes-512x1024.py')
        backbone = _task_backbone(config, checkpoint, 'mmseg', doconv)
        with torch.no_grad():
            layer1 = backbone(x)[0]
        torch.testing.assert_close(layer1, expected, rtol=1e-4, atol=1e-4)
        if doconv:
            _assert_pretrained_d(backbone, state)
            stem = [m for m in backbone.stem if isinstance(m, DOConv2d)]
            assert len(stem) == 3


@pytest.mark.parametrize('include,expected', [
    ('[backbone.stem]', 3), ('[backbone.layer1,backbone.layer2]', 7),
    ('[backbone.stem,backbone.layer1,backbone.layer2,backbone.layer3,'
     'backbone.layer4]', 19)])
def test_stage_ablation_of_table_6_through_the_switch(include, expected):
    """The paper's Table 6 (DO-Conv in some stages) is the switch's
    ``include``, on the command line as the docs write it."""
    import argparse

    from mmdoconv.utils.cli import DictAction, build_model, load_config
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args([
        '--cfg-options', 'runner_type=DOConvRunner',
        f'doconv.include={include}', 'model.backbone.conv_cfg=None'
    ]).cfg_options
    model = build_model(load_config(
        config_path('resnet', PAIRS['resnetv1c50']), options))
    assert count_doconv(model) == expected
    plain = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert all(m.kernel_size == (1, 1) for m in plain) == (expected == 19)
