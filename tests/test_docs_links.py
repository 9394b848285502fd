"""Every relative link in README.md, docs/ and the config folders' READMEs
resolves to a file (and an anchor, where one is given, to a heading)."""
import glob
import os.path as osp
import re

import pytest

from runs import ROOT

LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
PAGES = sorted(
    [osp.join(ROOT, 'README.md')]
    + glob.glob(osp.join(ROOT, 'docs', '**', '*.md'), recursive=True)
    + glob.glob(osp.join(ROOT, 'configs', '*', 'README.md')))


def _anchors(path: str) -> set:
    """GitHub's anchors of a markdown file's headings."""
    anchors = set()
    for line in open(path, encoding='utf-8'):
        if line.startswith('#'):
            title = line.lstrip('#').strip().lower()
            anchors.add(re.sub(r'[^\w\- ]', '', title).replace(' ', '-'))
    return anchors


@pytest.mark.parametrize('page', [osp.relpath(p, ROOT) for p in PAGES])
def test_relative_links_resolve(page):
    text = open(osp.join(ROOT, page), encoding='utf-8').read()
    broken = []
    for target in LINK.findall(text):
        if re.match(r'[a-z]+://|mailto:', target):
            continue
        path, _, anchor = target.partition('#')
        resolved = osp.normpath(osp.join(ROOT, osp.dirname(page), path)) \
            if path else osp.join(ROOT, page)
        if not osp.exists(resolved):
            broken.append(target)
        elif anchor and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, broken


def test_the_readme_is_short_and_reaches_every_docs_page():
    readme = open(osp.join(ROOT, 'README.md'), encoding='utf-8').read()
    assert len(readme.splitlines()) <= 250
    linked = {osp.normpath(osp.join(ROOT, target))
              for target in LINK.findall(readme)}
    docs = glob.glob(osp.join(ROOT, 'docs', 'en', '**', '*.md'),
                     recursive=True)
    assert docs and not set(map(osp.normpath, docs)) - linked


def test_a_broken_link_is_caught():
    assert LINK.findall('see [x](docs/nowhere.md) and [y](https://a.b)') == \
        ['docs/nowhere.md', 'https://a.b']
    assert not osp.exists(osp.join(ROOT, 'docs/nowhere.md'))
