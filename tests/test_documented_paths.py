"""Every tool path the project tells users about exists.

Paths in README.md, the config folders' READMEs and docs/, and in the
package's, tools' and workshop's source (error messages, docstrings).  A
path inside an upstream repository is written with the repository's name in
front (``mmsegmentation/tools/...``) and is checked in that library's
installed copy of its tools (``.mim/tools``).
"""
import glob
import importlib
import os.path as osp
import re

from runs import ROOT

#: Upstream repositories quoted in the docs, and their Python packages.
UPSTREAM = {'mmdetection': 'mmdet', 'mmdet': 'mmdet',
            'mmsegmentation': 'mmseg', 'mmseg': 'mmseg',
            'mmpretrain': 'mmpretrain'}
#: Quoted, but not a dependency (its own deploy tool, named for mmdeploy
#: users): nothing installed to check it against.
NOT_INSTALLED = {'mmdeploy'}
PATH = re.compile(r'(?:(\w+)/)?(?<![\w.-])(tools/[\w/.-]+\.(?:py|sh))\b')


def _documents():
    patterns = ['README.md', 'configs/*/README.md', 'docs/**/*.md',
                'mmdoconv/**/*.py', 'tools/**/*.py', 'tools/*.sh',
                'workshop/*.py', 'pyproject.toml', 'Makefile']
    for pattern in patterns:
        yield from glob.glob(osp.join(ROOT, pattern), recursive=True)


def _quoted_paths():
    for document in _documents():
        text = open(document, encoding='utf-8').read()
        for match in PATH.finditer(text):
            yield osp.relpath(document, ROOT), match.group(1), match.group(2)


def test_every_quoted_tool_path_exists():
    quoted = list(_quoted_paths())
    assert len(quoted) > 50  # the pattern finds what it should
    missing = []
    for document, repository, path in quoted:
        if repository in NOT_INSTALLED:
            continue
        if repository in UPSTREAM:
            package = importlib.import_module(UPSTREAM[repository])
            where = osp.join(osp.dirname(package.__file__), '.mim', path)
        else:
            where = osp.join(ROOT, path)
        if not osp.isfile(where):
            missing.append(f'{document}: {repository or "."}/{path}')
    assert not missing, missing


def test_the_pattern_catches_a_wrong_path():
    """The check above would fail on the old message's path."""
    assert [m.group(2) for m in PATH.finditer(
        'fold it (tools/fold_checkpoint.py) first')] == \
        ['tools/fold_checkpoint.py']
    assert not osp.isfile(osp.join(ROOT, 'tools/fold_checkpoint.py'))
