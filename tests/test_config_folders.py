"""Every config folder has OpenMMLab's README.md and metafile.yml, and the
metafile lists exactly the folder's configs."""
import glob
import os.path as osp

import pytest
import yaml

from runs import ROOT

FOLDERS = sorted(osp.basename(osp.dirname(p)) for p in glob.glob(
    osp.join(ROOT, 'configs', '*', '*.py')))


@pytest.mark.parametrize('folder', sorted(set(FOLDERS)))
def test_config_folder_has_readme_and_metafile(folder):
    path = osp.join(ROOT, 'configs', folder)
    readme = open(osp.join(path, 'README.md')).read()
    assert '2006.12030' in readme
    with open(osp.join(path, 'metafile.yml')) as f:
        meta = yaml.safe_load(f)
    configs = {osp.basename(p) for p in glob.glob(osp.join(path, '*.py'))}
    listed = {osp.basename(m['Config']) for m in meta['Models']}
    assert listed == configs
    for model in meta['Models']:
        assert osp.isfile(osp.join(ROOT, model['Config']))
        assert model['Name'] == osp.basename(model['Config'])[:-3]
        assert model['In Collection'] in {c['Name']
                                          for c in meta['Collections']}
        # The whole name: configs of one folder share long prefixes.
        assert model['Name'] in readme, model['Name']


def test_both_configs_inherit_their_task_sibling():
    for both in glob.glob(osp.join(ROOT, 'configs', '*', '*-doconv-both_*')):
        task = osp.basename(both).replace('-doconv-both_', '-doconv-task_')
        assert f"_base_ = ['./{task}']" in open(both).read(), both


def _citation(text: str) -> str:
    start = text.index('```bibtex')
    return text[start:text.index('```', start + 3)]


@pytest.mark.parametrize('folder', sorted(set(FOLDERS)))
def test_config_readme_cites_the_paper_as_the_readme_does(folder):
    readme = open(osp.join(ROOT, 'configs', folder, 'README.md')).read()
    assert _citation(readme) == _citation(
        open(osp.join(ROOT, 'README.md')).read())
