"""mmdoconv as users install it: from its wheel, away from the checkout.

``pip install .`` / ``pip install mmdoconv`` give the package without the
repository around it; the suite otherwise only sees the editable install.
"""
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from runs import ROOT

SOURCE = 'mmdoconv/ops/csrc/compose.cpp'
TRAIN = '''
import torch
import mmdoconv
from mmdoconv import DOConv2d
from mmdoconv.ops.fused_compose import fused_backend
print('package:', mmdoconv.__file__)
torch.manual_seed(0)
layer = DOConv2d(8, 8, 3, padding=1)
with torch.no_grad():
    layer.D.normal_(0, 0.1)
optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
before = layer.D.detach().clone()
out = layer(torch.randn(2, 8, 16, 16))
print('node:', out.grad_fn.name())
loss = out.square().mean()
loss.backward()
optimizer.step()
assert not torch.equal(layer.D, before)
print('backend:', fused_backend(layer.weight))
'''


def _build_tree(folder) -> str:
    """A copy of what the build reads (setuptools writes build/ and
    *.egg-info beside the sources: the checkout stays as it is)."""
    src = osp.join(folder, 'src')
    os.makedirs(src)
    for name in ('pyproject.toml', 'README.md', 'LICENSE', 'MANIFEST.in',
                 'requirements.txt'):
        shutil.copy(osp.join(ROOT, name), src)
    shutil.copytree(osp.join(ROOT, 'mmdoconv'), osp.join(src, 'mmdoconv'),
                    ignore=shutil.ignore_patterns('__pycache__'))
    return src


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """``(wheel, sdist, site)``: the built artefacts and a folder the wheel
    was installed into."""
    folder = tmp_path_factory.mktemp('wheel')
    src = _build_tree(str(folder))
    wheels = osp.join(folder, 'wheels')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                    '--no-build-isolation', '-q', src, '-w', wheels],
                   check=True, capture_output=True, text=True, timeout=300)
    subprocess.run([sys.executable, '-c',
                    'from setuptools import build_meta; '
                    'build_meta.build_sdist("sdist")'],
                   cwd=src, check=True, capture_output=True, text=True,
                   timeout=300)
    site = osp.join(folder, 'site')
    wheel, = glob.glob(osp.join(wheels, 'mmdoconv-*.whl'))
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q',
                    '--target', site, wheel], check=True, capture_output=True,
                   text=True, timeout=300)
    sdist, = glob.glob(osp.join(src, 'sdist', 'mmdoconv-*.tar.gz'))
    return wheel, sdist, site


def _train(site: str, cwd, **env) -> str:
    """Train a DO-Conv layer with the installed package only."""
    environment = dict(os.environ, PYTHONPATH=site, **env)
    result = subprocess.run([sys.executable, '-c', TRAIN], cwd=cwd,
                            env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert f'package: {osp.join(site, "mmdoconv", "__init__.py")}' in output
    return output


def test_wheel_and_sdist_carry_the_cpp_source_and_license(installed):
    wheel, sdist, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert SOURCE in names
    assert any(n.endswith('/LICENSE') for n in names), names
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert any(m.endswith(SOURCE) for m in members)
    assert any(m.endswith('/LICENSE') for m in members)


def test_installed_wheel_trains_with_the_cpp_composition(installed,
                                                         tmp_path):
    """The installed source has the checkout's hash, so the build that
    setup made is found and used."""
    output = _train(installed[2], tmp_path)
    assert 'backend: cpp' in output
    assert 'DO-Conv composition on cpu: fused (cpp)' in output
    # the training step is the extension's autograd node
    assert 'node: torch::autograd::CppNode<mmdoconv::RecomposingConv2d>' \
        in output


def test_installed_wheel_without_a_build_falls_back_in_one_line(installed,
                                                                tmp_path):
    output = _train(installed[2], tmp_path,
                    MMDOCONV_EXT_CACHE=str(tmp_path / 'empty'))
    assert 'backend: None' in output
    assert 'node: RecomposingConv2dBackward' in output  # the Python one
    lines = [l for l in output.splitlines() if 'DO-Conv composition' in l]
    assert len(lines) == 1 and 'pure PyTorch (the C++ extension is not ' \
        'built' in lines[0], output


def test_installed_package_without_its_source_falls_back(installed,
                                                        tmp_path):
    site = str(tmp_path / 'site')
    shutil.copytree(installed[2], site)
    os.remove(osp.join(site, SOURCE))
    output = _train(site, tmp_path)
    assert 'backend: None' in output
    lines = [l for l in output.splitlines() if 'DO-Conv composition' in l]
    assert len(lines) == 1 and 'the C++ source is not available' in \
        lines[0], output
