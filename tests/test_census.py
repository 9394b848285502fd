"""The census tool on a handful of upstream zoo configs (not the whole zoo:
tools/analysis_tools/doconv_census.py @workshop/census_zoo.txt does that)."""
import json
import os.path as osp

import torch

from runs import run_python
from workshop.census import census_of, markdown_table, short_name

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: config -> non-pointwise convs the switch converts (counted by hand from
#: the architectures, not read back from the tool).
EXPECTED = {
    # R50 stem + 16 3x3; FPN 4 + 1 extra (P6 on input; P7 on P6); head
    # 4 cls + 4 reg stacked 3x3 convs, retina_cls, retina_reg.
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py': 17 + 5 + 10,
    # R50 17, FPN 4, RPN conv 1, mask head 4 3x3 convs and its 2x2
    # transposed conv (upsample).
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py': 17 + 4 + 1 + 4 + 1,
    # ResNetV1c deep stem 3 + 16; PSP bottleneck 3x3; FCN aux 3x3.
    'mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py':
    19 + 1 + 1,
    # Stem 3x3 + 17 depthwise 3x3 (one per inverted residual block).
    'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py': 1 + 17,
    # Stem 7x7 + 16 grouped 3x3.
    'mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py': 1 + 16,
}


def test_census_of_five_upstream_configs(tmp_path):
    out = tmp_path / 'census.json'
    result = run_python(
        'tools/analysis_tools/doconv_census.py', *EXPECTED, '--out', str(out),
        '--markdown', str(tmp_path / 'census.md'), timeout=1200, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {short_name(row['config']): row
            for row in json.loads(out.read_text())}
    assert sorted(rows) == sorted(EXPECTED)
    for name, row in rows.items():
        assert row['ok'] and row['error'] == '', row
        assert row['converted'] == EXPECTED[name], (name, row['converted'])
        assert row['left_plain'] == {}
        assert row['fold_max_diff'] == 0.0 and row['strict_load']
        assert row['trainable_d'] > 0 and row['d_without_gradient'] == []
    mask = next(row for row in rows.values() if row['model'] == 'MaskRCNN')
    assert mask['other_convs'] == {
        'roi_head.mask_head.upsample': 'ConvTranspose2d'}
    # Progress with a total on stderr, the table and its summary on stdout.
    assert '[census 5/5]' in result.stderr
    assert '5 of 5 configs convert every non-pointwise conv' in result.stdout
    assert (tmp_path / 'census.md').read_text().strip() in result.stdout


def test_census_names_what_it_cannot_convert(tmp_path):
    # Weight-standardised convs have their own forward: left plain, named,
    # and the row fails.
    config = tmp_path / 'resnet18_convws.py'
    config.write_text(
        "_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']\n"
        "model = dict(backbone=dict(conv_cfg=dict(type='ConvWS')))\n")
    row = census_of(str(config))
    assert not row.ok and row.error == ''
    assert row.left_plain['backbone.conv1'] == 'own forward (ConvWS2d)'
    assert len(row.left_plain) == 17  # stem + 16 3x3 (ResNet-18: 8 blocks x 2)
    assert row.fold_max_diff == 0.0
    assert row.problems == ['nothing converted',
                            '17 non-pointwise convs left plain']
    assert '17 non-pointwise convs left plain' in markdown_table([row])
    assert '0 of 1 configs' in markdown_table([row])


def test_segnext_draws_in_its_forward_and_folds_exactly():
    """SegNeXt's LightHamHead draws its NMF bases with torch's RNG in every
    forward: without reseeding before each compared forward the census
    called an exact fold a failure ("fold changes outputs by 137")."""
    from workshop.census import resolve_configs
    config, = resolve_configs(
        ['mmseg::segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py'])
    row = census_of(config)
    assert row.error == '', row.error
    assert row.converted == 109 and row.added_params > 0
    assert row.fold_max_diff == 0.0 and row.plain_max_diff == 0.0
    assert row.ok, row.problems
    table = markdown_table([row])
    assert f'| 109 (+{row.added_params:,}) |' in table


def test_sparse_rcnn_is_initialised_as_the_runner_does():
    """Sparse R-CNN's heads need their own initialisation: built with
    PyTorch's default init, the box regression turned the learned proposals
    into boxes of negative size and mmcv's RoIAlign asserted (the census's
    one row that failed on its input, not on DO-Conv).  The census now runs
    ``init_weights()`` with the ``Pretrained`` entries left out."""
    from workshop.census import resolve_configs
    config, = resolve_configs(
        ['mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py'])
    row = census_of(config)
    assert row.error == '', row.error
    assert row.converted == 21 and row.trainable_d > 0
    assert row.fold_max_diff == 0.0 and row.plain_max_diff == 0.0
    assert row.ok, row.problems


def test_init_without_pretrained_keeps_every_other_initialiser():
    from mmengine.model import BaseModule

    from workshop.census import init_without_pretrained

    class Head(BaseModule):

        def __init__(self):
            super().__init__(init_cfg=[
                dict(type='Pretrained', checkpoint='torchvision://resnet50'),
                dict(type='Constant', layer='Conv2d', val=0.25)])
            self.conv = torch.nn.Conv2d(2, 2, 3)

    class Model(BaseModule):

        def __init__(self):
            super().__init__(init_cfg=dict(
                type='Pretrained', checkpoint='open-mmlab://nowhere'))
            self.head = Head()

    model = Model()
    init_without_pretrained(model)  # nothing downloaded, nothing raised
    assert model.init_cfg is None
    assert model.head.init_cfg == [dict(type='Constant', layer='Conv2d',
                                        val=0.25)]
    assert torch.all(model.head.conv.weight == 0.25)


def test_pose_models_convert_their_transposed_convs_and_fold_exactly():
    """mmpose's SimpleBaseline (ResNet-50 + three 4x4 transposed convs in
    its HeatmapHead, which the switch left plain before) and DEKR
    (bottom-up): the whole pipeline of each config runs on a synthetic
    COCO-keypoints sample, a step trains, the fold is exact and the folded
    weights load strictly into the plain model."""
    import numpy as np

    from workshop.census import resolve_configs
    top_down, bottom_up = resolve_configs([
        'mmpose::body_2d_keypoint/topdown_heatmap/coco/'
        'td-hm_res50_8xb64-210e_coco-256x192.py',
        'mmpose::body_2d_keypoint/dekr/coco/'
        'dekr_hrnet-w32_8xb10-140e_coco-512x512.py'])
    row = census_of(top_down)
    assert row.error == '', row.error
    # ResNet-50: stem 7x7 + 16 3x3; head: 3 transposed 4x4 (the final
    # 1x1 is pointwise).
    assert row.converted == 17 + 3
    assert row.other_convs == {f'head.deconv_layers.{i}': 'ConvTranspose2d'
                               for i in (0, 3, 6)}
    assert row.input_shape == (256, 192)  # the config's crop
    assert np.isfinite(row.loss) and row.compared == "mode='tensor', predict"
    assert row.fold_max_diff == 0.0 and row.plain_max_diff == 0.0
    assert row.ok, row.problems
    assert 'other kinds in the model: 3 ConvTranspose2d' in \
        markdown_table([row])
    row = census_of(bottom_up)
    assert row.error == '', row.error
    assert row.model == 'BottomupPoseEstimator' and row.input_shape == (512,
                                                                        512)
    assert row.trainable_d == row.converted > 200
    assert row.d_without_gradient == [] and row.unreached == []
    assert row.ok, row.problems
