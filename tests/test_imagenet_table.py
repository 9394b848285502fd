"""Every network of the paper's ImageNet tables (Tables 2-3 and its README
table) as a baseline / DO-Conv config pair: each builds, converts exactly the
non-pointwise convs the architecture has, folds exactly into the baseline,
and the new backbones train a few steps on the synthetic ImageNet set."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import mmdoconv  # noqa: F401
from mmdoconv import DOConv2d, fold_doconv
from mmdoconv.utils.cli import build_model
from runs import (as_cli, classification_options, config_path, run_tool,
                  upstream_tool)
from test_detection import _flatten

#: (folder, baseline) -> DO-Conv layers: (all, depthwise, grouped), counted
#: from the architectures: a ResNet's stem 7x7 + one 3x3 per bottleneck or
#: two per basic block; a MobileNet's stem 3x3 + one depthwise conv a block.
TABLE = {
    ('plain', 'plain-resnet18'): (1 + 16, 0, 0),
    ('resnet', 'resnet18-caffe'): (1 + 16, 0, 0),
    ('resnet', 'resnet34-caffe'): (1 + 32, 0, 0),
    ('resnet', 'resnet50-caffe'): (1 + 16, 0, 0),
    ('resnet', 'resnet101-caffe'): (1 + 33, 0, 0),
    ('resnet', 'resnet152-caffe'): (1 + 50, 0, 0),
    ('resnet', 'resnet18'): (1 + 16, 0, 0),
    ('resnet', 'resnet34'): (1 + 32, 0, 0),
    ('resnet', 'resnet101'): (1 + 33, 0, 0),
    ('resnet', 'resnet152'): (1 + 50, 0, 0),
    ('resnet_v2', 'preact-resnet18'): (1 + 16, 0, 0),
    ('resnet_v2', 'preact-resnet34'): (1 + 32, 0, 0),
    ('resnet_v2', 'preact-resnet50'): (1 + 16, 0, 0),
    ('resnet_v2', 'preact-resnet101'): (1 + 33, 0, 0),
    ('resnet_v2', 'preact-resnet152'): (1 + 50, 0, 0),
    ('resnext', 'resnext50-32x4d'): (1 + 16, 0, 16),
    ('mobilenet_v1', 'mobilenet-v1'): (1 + 13, 13, 0),
    ('mobilenet_v2', 'mobilenet-v2'): (1 + 17, 17, 0),
    ('mobilenet_v3', 'mobilenet-v3-large'): (1 + 15, 15, 0),
}


def _names(folder, baseline):
    recipe = '8xb128' if folder == 'mobilenet_v3' else '8xb32'
    return (config_path(folder, f'{baseline}_{recipe}_in1k.py'),
            config_path(folder, f'{baseline}-doconv_{recipe}_in1k.py'))


@pytest.mark.parametrize('folder,baseline', sorted(TABLE))
def test_doconv_config_differs_from_baseline_only_by_the_switch(
        folder, baseline):
    plain_path, doconv_path = _names(folder, baseline)
    plain = _flatten(Config.fromfile(plain_path).to_dict())
    doconv = _flatten(Config.fromfile(doconv_path).to_dict())
    changed = {p for p in plain.keys() | doconv.keys()
               if plain.get(p, '<absent>') != doconv.get(p, '<absent>')}
    assert 'runner_type' in changed
    assert all(p == 'runner_type' or p.startswith(
        ('custom_hooks', 'custom_imports')) for p in changed), changed


@pytest.mark.parametrize('folder,baseline', sorted(TABLE))
def test_pair_converts_the_architecture_and_folds_into_the_baseline(
        folder, baseline):
    plain_path, doconv_path = _names(folder, baseline)
    torch.manual_seed(0)
    model = build_model(Config.fromfile(doconv_path))
    layers = [m for m in model.modules() if isinstance(m, DOConv2d)]
    total, depthwise, grouped = TABLE[folder, baseline]
    assert len(layers) == total
    assert sum(m.groups == m.in_channels == m.out_channels > 1
               for m in layers) == depthwise
    assert sum(1 < m.groups < m.in_channels for m in layers) == grouped
    if folder == 'mobilenet_v3':  # its depthwise convs include 5x5 kernels
        assert sum(m.kernel_size == (5, 5) for m in layers) == 6
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers:
            layer.D.add_(0.1 * torch.randn(layer.D.shape,
                                           generator=generator))
    model.eval()
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected = model(x, mode='tensor')
        assert fold_doconv(model) == total
        torch.testing.assert_close(model(x, mode='tensor'), expected,
                                   rtol=0, atol=0)
    plain = build_model(Config.fromfile(plain_path)).eval()
    assert not any(isinstance(m, DOConv2d) for m in plain.modules())
    plain.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, mode='tensor'), expected,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('folder,baseline,tool', [
    ('resnet_v2', 'preact-resnet18', 'ours'),
    ('plain', 'plain-resnet18', 'ours'),
    ('mobilenet_v1', 'mobilenet-v1', 'mmpretrain'),
])
def test_new_backbone_trains_on_the_synthetic_set(tmp_path, synthetic_data,
                                                  folder, baseline, tool):
    _, doconv_path = _names(folder, baseline)
    script = upstream_tool('mmpretrain', 'train.py') if tool == 'mmpretrain' \
        else 'tools/train.py'
    result = run_tool(script, doconv_path, '--work-dir', str(tmp_path),
                      *as_cli(classification_options(
                          synthetic_data['imagenet'])))
    log = result.stdout + result.stderr
    total = TABLE[folder, baseline][0]
    assert f'DOConvRunner: converted {total} convs' in log
    assert 'accuracy/top1' in log
    from mmdoconv import load_checkpoint_file
    state = load_checkpoint_file(str(tmp_path / 'epoch_1.pth'))['state_dict']
    d = [v for k, v in state.items() if k.endswith('.D')]
    assert len(d) == total
    assert osp.isfile(tmp_path / 'epoch_1_folded.pth')
    if tool == 'mmpretrain':  # and its own test.py evaluates it folded
        tested = run_tool(upstream_tool('mmpretrain', 'test.py'), doconv_path,
                          str(tmp_path / 'epoch_1.pth'), '--work-dir',
                          str(tmp_path / 'test'), *as_cli(
                              classification_options(
                                  synthetic_data['imagenet'])))
        log = tested.stdout + tested.stderr
        assert f'folded {total} DO-Conv layers' in log
        assert 'accuracy/top1' in log


def test_paper_ablations_through_the_switch():
    """Tables 6-8 on a new backbone: stages by include, D_mul rule, D init."""
    cfg = Config.fromfile(_names('resnet_v2', 'preact-resnet50')[1])
    cfg.merge_from_dict(dict(doconv=dict(
        include=['backbone.conv1', 'backbone.layer1'], D_mul='M+2xN+2',
        D_init='random')))
    model = build_model(copy.deepcopy(cfg))
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, DOConv2d)}
    assert sorted(layers) == sorted(
        ['backbone.conv1'] + [f'backbone.layer1.{i}.conv2' for i in range(3)])
    assert layers['backbone.layer1.0.conv2'].D_mul == 5 * 5
    assert layers['backbone.conv1'].D_mul == 9 * 9
    identity = layers['backbone.layer1.0.conv2']._identity
    assert not torch.equal(layers['backbone.layer1.0.conv2'].D + identity,
                           identity)  # random init: D != 0


REFERENCE_PARAMS = {
    # Keras applications' MobileNet(alpha=1.0): 4,231,976 trainable
    # parameters (Howard et al. Table 1 / the paper's "4.2 million").
    'MobileNetV1': 4_231_976,
}


def _torchvision_params(depth):
    import torchvision
    return sum(p.numel() for p in getattr(
        torchvision.models, f'resnet{depth}')(weights=None).parameters())


def _bn_channels_v1(depth):
    """BatchNorm channels of torchvision's ResNet-v1 (one BN per conv)."""
    import torchvision
    model = getattr(torchvision.models, f'resnet{depth}')(weights=None)
    return sum(m.num_features for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def _bn_channels_v2(depth):
    """BatchNorm channels of a pre-activation ResNet, from the architecture:
    stem BN, one BN before each conv of a unit (on its input), a final BN;
    projection shortcuts have none."""
    bottleneck = depth >= 50
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
              101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}[depth]
    expansion = 4 if bottleneck else 1
    channels, total = 64, 64
    for stage, count in enumerate(blocks):
        width = 64 * 2**stage
        for _ in range(count):
            total += channels + (2 * width if bottleneck else width)
            channels = width * expansion
    return total + channels


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_preact_resnet_matches_the_published_architecture(depth):
    cfg = Config.fromfile(_names('resnet_v2', f'preact-resnet{depth}')[0])
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    # Same convs and FC as torchvision's ResNet-v1; only the BNs move.
    expected = _torchvision_params(depth) - 2 * _bn_channels_v1(depth) \
        + 2 * _bn_channels_v2(depth)
    assert params == expected
    features = model.backbone(torch.randn(1, 3, 224, 224))
    assert features[-1].shape == (1, 512 if depth < 50 else 2048, 7, 7)


def test_plain_resnet18_is_resnet18_without_shortcuts():
    model = build_model(Config.fromfile(_names('plain', 'plain-resnet18')[0]))
    params = sum(p.numel() for p in model.parameters())
    # torchvision's ResNet-18 minus its three 1x1 projection convs and BNs.
    projections = sum(c_in * c_out + 2 * c_out
                      for c_in, c_out in ((64, 128), (128, 256), (256, 512)))
    assert params == _torchvision_params(18) - projections == 11_515_688
    assert model.backbone(torch.randn(1, 3, 224, 224))[-1].shape == \
        (1, 512, 7, 7)


def test_mobilenet_v1_matches_the_published_architecture():
    model = build_model(Config.fromfile(_names('mobilenet_v1',
                                               'mobilenet-v1')[0]))
    assert sum(p.numel() for p in model.parameters()) == \
        REFERENCE_PARAMS['MobileNetV1']
    assert model.backbone(torch.randn(1, 3, 224, 224))[-1].shape == \
        (1, 1024, 7, 7)


def test_v1_and_v1b_put_the_stride_where_the_paper_says():
    v1 = build_model(Config.fromfile(_names('resnet', 'resnet50-caffe')[0]))
    v1b = build_model(Config.fromfile(_names('resnet', 'resnet50')[0]))
    first = lambda model: model.backbone.layer2[0]  # noqa: E731
    assert first(v1).conv1.stride == (2, 2) and first(v1).conv2.stride == (1, 1)
    assert first(v1b).conv1.stride == (1, 1) and first(v1b).conv2.stride == \
        (2, 2)


def _build_in_mmpretrain(cfg: dict):
    """Build in mmpretrain's scope, whatever default scope an earlier
    test's Runner left."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg)


@pytest.mark.parametrize('backbone,stages,channels', [
    (dict(type='PreActResNet', depth=50), 4, (256, 512, 1024, 2048)),
    (dict(type='PlainResNet', depth=18), 4, (64, 128, 256, 512)),
    (dict(type='MobileNetV1'), 13, (64, 128, 128, 256, 256, 512, 512, 512,
                                    512, 512, 512, 1024, 1024)),
    # The CIFAR networks (tests/test_cifar.py has their architecture).
    (dict(type='CIFARResNet', depth=20), 3, (16, 32, 64)),
    (dict(type='CIFARPreActResNet', depth=164), 3, (64, 128, 256)),
    (dict(type='CIFARPlainNet', depth=20), 3, (16, 32, 64)),
])
def test_new_backbones_take_mmpretrain_options(backbone, stages, channels):
    model = _build_in_mmpretrain(dict(
        backbone, out_indices=tuple(range(stages)), frozen_stages=1,
        norm_eval=True))
    model.init_weights()
    outs = model(torch.randn(1, 3, 64, 64))
    assert tuple(o.shape[1] for o in outs) == channels
    model.train()
    frozen = list(model.stem_modules()) + list(model.stage_modules())[:1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    later = list(model.stage_modules())[1]
    assert all(p.requires_grad for p in later.parameters())
    assert not any(m.training for m in model.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))  # norm_eval
    with pytest.raises(ValueError, match='out_indices'):
        _build_in_mmpretrain(dict(backbone, out_indices=(stages, )))
    with pytest.raises(ValueError, match='frozen_stages'):
        _build_in_mmpretrain(dict(backbone, frozen_stages=stages + 1))


def test_tools_build_the_model_as_the_runner_does():
    """mmpretrain configs keep mean, std and num_classes in a top-level
    data_preprocessor, which the Runner gives the model; so do our tools
    (export normalises images with it, the census one-hot encodes with it)."""
    cfg = Config.fromfile(_names('resnet', 'resnet18')[0])
    assert 'data_preprocessor' not in cfg.model
    model = build_model(cfg)
    expected = torch.tensor(cfg.data_preprocessor['mean']).view(-1, 1, 1)
    torch.testing.assert_close(model.data_preprocessor.mean, expected)
    assert model.data_preprocessor.num_classes == 1000
    assert 'data_preprocessor' not in cfg.model  # the config is untouched
